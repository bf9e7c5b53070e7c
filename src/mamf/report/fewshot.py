"""The report's "Few-shot protocols" section: the rows of each protocol that asks for a table of
its own, as the protocol declares (`Protocol.shots_table`: accuracy against shots, mean ± std
over seeds, the field's form, as coop's; `Protocol.row_fields`: the fields it adds to its rows,
as base2novel's base, novel and harmonic mean), and published numbers beside mamf's own only
where dataset, backbone and protocol match.

The published anchors (`mamf/data/anchors.json`) are averages over CoOp's 11 datasets with CLIP
ViT-B/16: they are shown only when the rows hold coop results of that model on all 11 datasets,
beside mamf's own average over them, and are labelled as published.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import numpy as np

from mamf import protocols
from mamf.report.benchmark import benchmark_section
from mamf.report.common import colour, in_order, label, md, safe_name
from mamf.report.compare import one_per_cell
from mamf.report.figures import pyplot, save
from mamf.results import Row


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one seed)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _mean_std_pct(values: list[float]) -> str:
    """Per-seed values as '%' mean ± std (seeds)."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({len(values)})"


def by_shots(rows: list[Row], value: Callable[[Row], float] = lambda r: r.acc_mean) -> dict:
    """(dataset, method) -> shots -> the per-seed values of `value` (default: the row's mean
    accuracy), one per seed: a second row of a seed in one cell (`one_per_cell`) is never
    counted as another seed."""
    out: dict = OrderedDict()
    for r in one_per_cell(rows)[0].values():
        out.setdefault((r.dataset_name, r.method), {}).setdefault(r.shots, []).append(value(r))
    return out


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def load_anchors() -> dict:
    return json.loads((files("mamf") / "data" / "anchors.json").read_text(encoding="utf-8"))


def anchor_lines(rows: list[Row], anchors: dict | None = None) -> list[str]:
    """Published numbers beside mamf's, only for a protocol, a model and a set of datasets that
    match."""
    anchors = anchors or load_anchors()
    wanted = {_key(d) for d in anchors["datasets"]}
    models = {_key(m) for m in anchors["models"]}
    mine = [r for r in rows if r.protocol == anchors["protocol"] and _key(r.model) in models
            and _key(r.dataset_name) in wanted]
    if {_key(r.dataset_name) for r in mine} != wanted:
        return []
    shots = sorted({int(k) for a in anchors["methods"] for k in a["shots"]})
    lines = [f"### Published numbers beside mamf's ({anchors['backbone']}, "
             f"{anchors['dataset']}, {anchors['protocol']} protocol)", "",
             "Rows marked *published* are copied from the papers named, not measured here; "
             "mamf's rows average its own per-dataset means over the same 11 datasets.", "",
             "| method | " + " | ".join(f"{k}-shot" for k in shots) + " | source |",
             "|---|" + "---|" * (len(shots) + 1)]
    for a in anchors["methods"]:
        shown = [f"{a['shots'][str(k)]:.1f}" if str(k) in a["shots"] else "-" for k in shots]
        lines.append(f"| {a['method']} (*published*) | " + " | ".join(shown)
                     + f" | {a['source']} ({a['read']}) |")
    table = by_shots(mine)
    for m in in_order({r.method for r in mine}):
        shown = []
        for k in shots:
            means = [float(np.mean(v[k])) for (d, mm), v in table.items() if mm == m and k in v]
            shown.append(f"{100 * np.mean(means):.1f}" if len(means) == len(wanted) else "-")
        lines.append(f"| {label(m)} (mamf) | " + " | ".join(shown) + " | this report |")
    return lines + [""]


def shots_figure(rows: list[Row], dataset: str, path: Path, protocol: str) -> Path:
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
    ax.set_title(f"{dataset} ({protocol} protocol)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, path)


def _shots_tables(rows: list[Row], protocol: protocols.Protocol, figures: Path,
                  prefix: str) -> tuple[list[str], dict[str, Path]]:
    """A protocol's rows as accuracy against shots, a table and a figure per dataset."""
    whole = " on the whole test split" if protocol.all_way else ""
    lines = [f"### {protocol.name}: {'all-way ' if protocol.all_way else ''}accuracy against "
             "shots", "",
             f"Test accuracy (%){whole}, mean ± std over seeds (number of seeds in brackets).", ""]
    pngs = {}
    table = by_shots(rows)
    for d in OrderedDict.fromkeys(r.dataset_name for r in rows):
        ks = sorted({r.shots for r in rows if r.dataset_name == d})
        lines += [f"**{d}**", "", "| method | " + " | ".join(f"{k}-shot" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for m in in_order({mm for dd, mm in table if dd == d}):
            v = table[(d, m)]
            lines.append(f"| {label(m)} | "
                         + " | ".join(_mean_std_pct(v[k]) if k in v else "-" for k in ks) + " |")
        lines.append("")
        name = f"{prefix}{safe_name(d)}"
        pngs[name] = shots_figure(rows, d, figures / f"{name}.png", protocol.name)
    # CoOp folders' rows: the benchmark section puts the published numbers beside them
    anchors = [] if any(r.coop_dataset for r in rows) else anchor_lines(rows)
    return lines + anchors, pngs


def _own_fields_table(rows: list[Row], protocol: protocols.Protocol) -> list[str]:
    """A protocol's rows by the fields it declares (`Protocol.row_fields`), mean ± std over
    seeds."""
    own = protocol.row_fields
    titles = [title for _, title in own.fields]
    lines = [f"### {protocol.name}: {own.title}", "", own.note, "",
             "| dataset | method | shots | " + " | ".join(titles) + " |",
             "|---|---|---|" + "---|" * len(titles)]
    values = [by_shots(rows, lambda r, f=f: r.own(f)) for f, _ in own.fields]
    for (d, m), v in values[0].items():
        for k in sorted(v):
            lines.append(f"| {d} | {label(m)} | {k} | "
                         + " | ".join(_mean_std_pct(field[(d, m)][k]) for field in values) + " |")
    return lines + [""]


def fewshot_section(rows: list[Row], figures: Path) -> tuple[list[str], dict[str, Path]]:
    """Markdown lines and figures for the rows of every protocol that asks for a table of its
    own: accuracy against shots (`Protocol.shots_table`) or the fields it adds to its rows
    (`Protocol.row_fields`); nothing where no row's protocol asks."""
    present = {r.protocol for r in rows}
    kinds = [protocols.get(p) for p in protocols.names() if p in present]
    shown = [p for p in kinds if p.row_fields is not None or p.shots_table]
    if not shown:
        return [], {}
    lines, pngs = ["## Few-shot protocols", ""], {}
    by_shots_tables = sum(1 for p in shown if p.row_fields is None)
    counted: list[Row] = []
    for p in shown:
        mine = [r for r in rows if r.protocol == p.name]
        counted += mine
        if p.row_fields is not None:
            # (a base2novel row of the dev split scores the base classes alone: nothing to add)
            mine = [r for r in mine if all(r.own(f) is not None for f, _ in p.row_fields.fields)]
            if mine:
                lines += _own_fields_table(mine, p)
            continue
        prefix = "shots-" if by_shots_tables == 1 else f"shots-{safe_name(p.name)}-"
        more, figures_of = _shots_tables(mine, p, figures, prefix)
        lines += more
        pngs.update(figures_of)
    lines += benchmark_section(rows)
    repeats = one_per_cell(counted)[1]
    if repeats:
        lines += ["Left out of these tables, since each seed counts once: "
                  + "; ".join(f"{md(r.dataset_name)} {md(label(r.method))} {r.shots}-shot "
                              f"seed {r.seed} ({md(why)})" for r, why in repeats) + ".", ""]
    return lines, pngs
