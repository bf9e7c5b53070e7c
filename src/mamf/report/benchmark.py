"""The report's "The field's benchmark" section: rows measured on the folders of CoOp's
DATASETS.md (rows naming their `coop_dataset`) as the field tabulates them, beside the published
numbers of `mamf/data/anchors.json`, each with its source and how it was read.

- the few-shot table: per K, each method's mean over seeds on each of the 11 datasets and their
  average (the average only when all 11 are there), with the published averages beside it for
  the same backbone;
- base-to-novel: base, novel and their harmonic mean per dataset, and the 11-dataset average
  under both conventions the field uses (the mean of the per-dataset HMs; the HM of the averaged
  base and novel accuracies), saying which one each published source used;
- the ImageNet variants: an ImageNet-trained run scored on ImageNet-V2, -Sketch, -A and -R.

Rows of one benchmark entry under other settings (an experiment's `<dataset>-clip-lora`) are
labelled by the entry's suffix: `classical (clip-lora)`.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files

import numpy as np

from mamf import protocols
from mamf.data import coop_layouts
from mamf.protocols.base2novel import harmonic_mean
from mamf.report.common import in_order, label, md
from mamf.report.compare import one_per_cell
from mamf.results import Row


def load_anchors() -> dict:
    return json.loads((files("mamf") / "data" / "anchors.json").read_text(encoding="utf-8"))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def row_label(row: Row) -> str:
    """The method's label, with the suffix of an experiment entry that runs a dataset under
    other settings (`oxford_pets-clip-lora` -> "(clip-lora)"); a suffix naming the protocol is
    not repeated."""
    name = label(row.method)
    entry, layout = row.experiment_dataset, _layout_of(row)
    if entry and layout is not None and entry.startswith(layout.key + "-"):
        suffix = entry[len(layout.key) + 1:]
        if suffix != row.protocol:
            name += f" ({suffix})"
    return name


def _layout_of(row: Row) -> coop_layouts.Layout | None:
    return next((x for x in coop_layouts.layouts() if x.name == row.coop_dataset), None)


def _benchmark_names() -> tuple[list[str], list[str]]:
    eleven, variants = coop_layouts.benchmark_keys()
    return ([coop_layouts.by_key(k).name for k in eleven],
            [coop_layouts.by_key(k).name for k in variants])


def seed_means(rows: list[Row], field: str = "acc_mean") -> dict:
    """(label, CoOp dataset, shots) -> the per-seed values of `field` (one row per seed)."""
    out: dict = {}
    for r in one_per_cell(rows)[0].values():
        value = r.acc_mean if field == "acc_mean" else r.own(field)
        out.setdefault((row_label(r), r.coop_dataset, r.shots), []).append(float(value))
    return out


def _pct(values) -> str:
    return "-" if values is None else f"{100 * float(np.mean(values)):.1f}"


def _model_matches(rows: list[Row], anchors: dict) -> bool:
    models = {_key(m) for m in anchors["models"]}
    return bool(rows) and all(_key(r.model) in models for r in rows)


def benchmark_section(rows: list[Row], anchors: dict | None = None) -> list[str]:
    """Markdown lines of the section (none: no row from CoOp's folders)."""
    rows = [r for r in rows if r.coop_dataset]
    if not rows:
        return []
    anchors = anchors or load_anchors()
    eleven, variants = _benchmark_names()
    kinds = {p: protocols.get(p) for p in {r.protocol for r in rows}}
    # the field's two tables: accuracy against K shots, and a protocol's own fields (base/novel)
    coop = [r for r in rows if kinds[r.protocol].shots_table and r.coop_dataset in eleven]
    b2n = [r for r in rows if kinds[r.protocol].row_fields is not None and r.own("hm") is not None]
    shifted = [r for r in rows if r.coop_dataset in variants]
    lines = ["## The field's benchmark", "",
             "Rows measured on the folders of CoOp's DATASETS.md, read as CoOp reads them "
             "(docs/benchmark.md): accuracy (%) on the whole test split, the mean over seeds "
             "(their number in the last column). Published rows are copied from the sources "
             "named below them, not measured here, and are shown only for "
             f"{anchors['backbone']} ({', '.join(anchors['models'])}).", ""]
    if coop:
        lines += few_shot_lines(coop, anchors, eleven)
    if b2n:
        lines += base2novel_lines(b2n, anchors, eleven)
    if shifted:
        lines += variant_lines(rows, variants)
    return lines


def few_shot_lines(rows: list[Row], anchors: dict, eleven: list[str]) -> list[str]:
    table = seed_means(rows)
    published = _model_matches(rows, anchors)
    per_dataset = anchors.get("per_dataset", {}) if published else {}
    lines = []
    for k in sorted({r.shots for r in rows}):
        here = [d for d in eleven if any(key[1] == d and key[2] == k for key in table)]
        lines += [f"### {k}-shot (coop protocol)", "",
                  "| method | " + " | ".join(here) + " | 11-dataset average | seeds |",
                  "|---|" + "---|" * (len(here) + 2)]
        for name in in_order({key[0] for key in table if key[2] == k}):
            per_seed = [table.get((name, d, k)) for d in eleven]
            average = f"{100 * np.mean([np.mean(c) for c in per_seed]):.1f}" \
                if all(c is not None for c in per_seed) else "-"
            seeds = sorted({len(c) for c in per_seed if c is not None})
            lines.append(f"| {md(name)} | " + " | ".join(_pct(table.get((name, d, k)))
                                                         for d in here)
                         + f" | {average} | {'/'.join(map(str, seeds))} |")
        if published:
            for a in anchors["methods"]:
                value = a["shots"].get(str(k))
                if value is None:
                    continue
                values = [per_dataset.get(a["method"], {}).get(d, {}).get(str(k)) for d in here]
                lines.append(f"| {a['method']} (*published*) | "
                             + " | ".join("-" if c is None else f"{c:.1f}" for c in values)
                             + f" | {value:.1f} | - |")
        lines.append("")
    if published:
        lines += ["Published averages: " + "; ".join(
            f"**{a['method']}**: {a['source']} ({a['read']})" for a in anchors["methods"])
            + ".", ""]
    else:
        lines += [f"No published numbers beside these: they are for {anchors['backbone']}, and "
                  "these rows are of " + ", ".join(sorted({r.model for r in rows})) + ".", ""]
    return lines


def hm_conventions(base: dict[str, float], novel: dict[str, float]) -> tuple[float, float]:
    """The two 11-dataset HMs: the mean of the per-dataset HMs, and the HM of the averaged
    base and novel accuracies (they differ: the HM is not linear)."""
    names = sorted(base)
    per_dataset = float(np.mean([harmonic_mean(base[d], novel[d]) for d in names]))
    of_averages = harmonic_mean(float(np.mean([base[d] for d in names])),
                                float(np.mean([novel[d] for d in names])))
    return per_dataset, of_averages


def base2novel_lines(rows: list[Row], anchors: dict, eleven: list[str]) -> list[str]:
    base, novel = seed_means(rows, "base_acc"), seed_means(rows, "novel_acc")
    lines = ["### Base-to-novel (CoCoOp's class halves)", "",
             "| method | shots | dataset | base | novel | HM | seeds |",
             "|---|---|---|---|---|---|---|"]
    averages = []
    order = in_order({key[0] for key in base})
    for name, k in sorted({(key[0], key[2]) for key in base},
                          key=lambda x: (order.index(x[0]), x[1])):
        b = {d: float(np.mean(base[(name, d, k)])) for d in eleven if (name, d, k) in base}
        n = {d: float(np.mean(novel[(name, d, k)])) for d in b}
        for d in b:
            lines.append(f"| {md(name)} | {k} | {d} | {100 * b[d]:.1f} | {100 * n[d]:.1f} | "
                         f"{100 * harmonic_mean(b[d], n[d]):.1f} | {len(base[(name, d, k)])} |")
        if len(b) == len(eleven):
            averages.append((name, k, b, n))
    lines.append("")
    lines += ["11-dataset averages, under both conventions: **HM of averages** is the harmonic "
              "mean of the averaged base and novel accuracies (CoCoOp's Table 1 computes its "
              "average row so); **mean of HMs** averages the per-dataset HMs. They differ "
              "because the harmonic mean is not linear.", "",
              "| method | shots | base | novel | HM of averages | mean of HMs |",
              "|---|---|---|---|---|---|"]
    for name, k, b, n in averages:
        per_dataset, of_averages = hm_conventions(b, n)
        lines.append(f"| {md(name)} | {k} | {100 * np.mean(list(b.values())):.1f} | "
                     f"{100 * np.mean(list(n.values())):.1f} | {100 * of_averages:.1f} | "
                     f"{100 * per_dataset:.1f} |")
    published = anchors.get("base2novel")
    if published and _model_matches(rows, anchors):
        convention = {"hm_of_averages": "HM of averages",
                      "mean_of_hms": "mean of HMs"}[published["hm_convention"]]
        for a in published["methods"]:
            hm = {"HM of averages": "-", "mean of HMs": "-"}
            hm[convention] = f"{a['hm']:.2f}"
            lines.append(f"| {a['method']} (*published*) | 16 | {a['base']:.2f} | "
                         f"{a['novel']:.2f} | {hm['HM of averages']} | "
                         f"{hm['mean of HMs']} |")
        lines += ["", f"Published: {published['source']} ({published['read']}; its convention: "
                  f"{convention}, checked: {published['hm_checked']})."]
    if not averages:
        lines.append("| (the averages need all 11 datasets) | | | | | |")
    return lines + [""]


def variant_lines(rows: list[Row], variants: list[str]) -> list[str]:
    """ImageNet-trained runs on the variants: one line per (method, shots), by the run."""
    def run_of(r: Row) -> tuple:  # the training a row scored: its run folder, or in a grid
        return (row_label(r), r.shots, r.seed, r.run, r.experiment)

    source = {run_of(r): r for r in rows if r.coop_dataset == "ImageNet"
              and protocols.get(r.protocol).shots_table}
    table: dict = {}
    for r in one_per_cell([r for r in rows if r.coop_dataset in variants])[0].values():
        table.setdefault((row_label(r), r.shots), {}).setdefault(
            r.coop_dataset, []).append(float(r.acc_mean))
        src = source.get(run_of(r))
        if src is not None:
            table[(row_label(r), r.shots)].setdefault("ImageNet", []).append(
                float(src.acc_mean))
    lines = ["### ImageNet to its variants", "",
             "An ImageNet-trained run scored on each variant over the variant's own classes "
             "(200 for -A and -R), with no support set. OOD average: the mean over the four.", "",
             "| method | shots | ImageNet | " + " | ".join(variants) + " | OOD average |",
             "|---|---|---|" + "---|" * (len(variants) + 1)]
    for (name, k), by_variant in sorted(table.items()):
        ood = [np.mean(by_variant[v]) for v in variants if v in by_variant]
        lines.append(f"| {md(name)} | {k} | {_pct(by_variant.get('ImageNet'))} | "
                     + " | ".join(_pct(by_variant.get(v)) for v in variants)
                     + f" | {f'{100 * np.mean(ood):.1f}' if len(ood) == len(variants) else '-'} |")
    return lines + [""]
