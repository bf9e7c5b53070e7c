"""The report's "Few-shot protocols" section: coop rows as accuracy against shots (mean ± std
over seeds, the field's form), base2novel rows as base, novel and harmonic mean, and published
numbers beside mamf's own only where dataset, backbone and protocol match.

The published anchors (`mamf/data/anchors.json`) are averages over CoOp's 11 datasets with CLIP
ViT-B/16: they are shown only when the rows hold coop results of that model on all 11 datasets,
beside mamf's own average over them, and are labelled as published.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from importlib.resources import files
from pathlib import Path

import numpy as np

from mamf import protocols
from mamf.report.benchmark import benchmark_section
from mamf.report.common import colour, in_order, label, md, safe_name
from mamf.report.compare import one_per_cell
from mamf.report.figures import pyplot, save
from mamf.results import dataset_name


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one seed)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _cell(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({len(values)})"


def by_shots(rows: list[dict], field: str = "acc_mean") -> dict:
    """(dataset, method) -> shots -> the per-seed values of `field`, one per seed: a second row
    of a seed in one cell (`one_per_cell`) is never counted as another seed."""
    out: dict = OrderedDict()
    for r in one_per_cell(rows)[0].values():
        out.setdefault((dataset_name(r), r["method"]), {}).setdefault(r["shots"], []).append(
            r[field])
    return out


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_anchors() -> dict:
    return json.loads((files("mamf") / "data" / "anchors.json").read_text(encoding="utf-8"))


def anchor_lines(coop: list[dict], anchors: dict | None = None) -> list[str]:
    """Published numbers beside mamf's, only for a model and a set of datasets that match."""
    anchors = anchors or load_anchors()
    wanted = {_key(d) for d in anchors["datasets"]}
    models = {_key(m) for m in anchors["models"]}
    mine = [r for r in coop if _key(r["model"]) in models and _key(dataset_name(r)) in wanted]
    if {_key(dataset_name(r)) for r in mine} != wanted:
        return []
    shots = sorted({int(k) for a in anchors["methods"] for k in a["shots"]})
    lines = [f"### Published numbers beside mamf's ({anchors['backbone']}, "
             f"{anchors['dataset']}, {anchors['protocol']} protocol)", "",
             "Rows marked *published* are copied from the papers named, not measured here; "
             "mamf's rows average its own per-dataset means over the same 11 datasets.", "",
             "| method | " + " | ".join(f"{k}-shot" for k in shots) + " | source |",
             "|---|" + "---|" * (len(shots) + 1)]
    for a in anchors["methods"]:
        cells = [f"{a['shots'][str(k)]:.1f}" if str(k) in a["shots"] else "-" for k in shots]
        lines.append(f"| {a['method']} (*published*) | " + " | ".join(cells)
                     + f" | {a['source']} ({a['read']}) |")
    table = by_shots(mine)
    for m in in_order({r["method"] for r in mine}):
        cells = []
        for k in shots:
            means = [float(np.mean(v[k])) for (d, mm), v in table.items() if mm == m and k in v]
            cells.append(f"{100 * np.mean(means):.1f}" if len(means) == len(wanted) else "-")
        lines.append(f"| {label(m)} (mamf) | " + " | ".join(cells) + " | this report |")
    return lines + [""]


def shots_figure(rows: list[dict], dataset: str, path: Path) -> Path:
    """Accuracy against training shots per class (log scale), mean ± std over seeds."""
    plt = pyplot()
    table = {m: v for (d, m), v in by_shots(rows).items() if d == dataset}
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for m in in_order(table):
        ks = sorted(table[m])
        means, stds = np.array([mean_std(table[m][k]) for k in ks]).T
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, color=colour(m), label=label(m))
    ks_all = sorted({k for v in table.values() for k in v})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks_all, [str(k) for k in ks_all])
    ax.set_xlabel("training shots per class")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{dataset} (coop protocol)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, path)


def fewshot_section(rows: list[dict], figures: Path) -> tuple[list[str], dict[str, Path]]:
    """Markdown lines and figures for the coop and base2novel rows (none: nothing)."""
    kinds = {p: protocols.get(p) for p in {r["protocol"] for r in rows}}
    coop = [r for r in rows if kinds[r["protocol"]].all_way and kinds[r["protocol"]].pooled]
    # (a base2novel row of the dev split scores the base classes alone: no HM to tabulate)
    b2n = [r for r in rows if kinds[r["protocol"]].all_way and not kinds[r["protocol"]].pooled
           and r.get("hm") is not None]
    if not coop and not b2n:
        return [], {}
    lines, pngs = ["## Few-shot protocols", ""], {}
    if coop:
        lines += ["### coop: all-way accuracy against shots", "",
                  "Test accuracy (%) on the whole test split, mean ± std over seeds (number of "
                  "seeds in brackets).", ""]
        table = by_shots(coop)
        for d in OrderedDict.fromkeys(dataset_name(r) for r in coop):
            ks = sorted({r["shots"] for r in coop if dataset_name(r) == d})
            lines += [f"**{d}**", "", "| method | " + " | ".join(f"{k}-shot" for k in ks) + " |",
                      "|---|" + "---|" * len(ks)]
            for m in in_order({mm for dd, mm in table if dd == d}):
                v = table[(d, m)]
                lines.append(f"| {label(m)} | "
                             + " | ".join(_cell(v[k]) if k in v else "-" for k in ks) + " |")
            lines.append("")
            safe = safe_name(d)
            pngs[f"shots-{safe}"] = shots_figure(coop, d, figures / f"shots-{safe}.png")
        if not any(r.get("coop_dataset") for r in coop):  # else the benchmark section has them
            lines += anchor_lines(coop)
    if b2n:
        lines += ["### base2novel: base, novel and harmonic mean", "",
                  "Accuracy (%) on the base classes' and the novel classes' test images and their "
                  "harmonic mean (HM), mean ± std over seeds.", "",
                  "| dataset | method | shots | base | novel | HM |", "|---|---|---|---|---|---|"]
        base, novel, hm = by_shots(b2n, "base_acc"), by_shots(b2n, "novel_acc"), by_shots(b2n, "hm")
        for (d, m), v in hm.items():
            for k in sorted(v):
                lines.append(f"| {d} | {label(m)} | {k} | {_cell(base[(d, m)][k])} | "
                             f"{_cell(novel[(d, m)][k])} | {_cell(v[k])} |")
        lines.append("")
    lines += benchmark_section(rows)
    repeats = one_per_cell(coop + b2n)[1]
    if repeats:
        lines += ["Left out of these tables, since each seed counts once: "
                  + "; ".join(f"{md(dataset_name(r))} {md(label(r['method']))} {r['shots']}-shot "
                              f"seed {r['seed']} ({md(why)})" for r, why in repeats) + ".", ""]
    return lines, pngs
