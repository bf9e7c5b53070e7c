"""Tables and figures from results rows: what a person reads at a glance."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mamf.config import METHODS

METHOD_LABELS = {"zeroshot": "zero-shot", "classical": "classical FT", "mamf": "MAMF",
                 "fomaml": "FOMAML"}


def pooled(rows: list[dict]) -> dict:
    """(dataset, method) -> mean, 95 % CI and count over all their test tasks."""
    groups: dict[tuple, list[float]] = OrderedDict()
    for r in rows:
        key = (r.get("experiment_dataset", r["dataset"]), r["method"])
        groups.setdefault(key, []).extend(r["task_accs"])
    out = {}
    for key, accs in groups.items():
        a = np.asarray(accs, dtype=float)
        ci = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0
        out[key] = (float(a.mean()), float(ci), len(a))
    return out


def _ordered(rows: list[dict]) -> tuple[list[str], list[str]]:
    datasets = list(OrderedDict.fromkeys(r.get("experiment_dataset", r["dataset"]) for r in rows))
    present = {r["method"] for r in rows}
    return datasets, [m for m in METHODS if m in present]


def summary_table(rows: list[dict]) -> str:
    """A markdown table: one row per dataset, one column per method, mean +- 95 % CI."""
    stats = pooled(rows)
    datasets, methods = _ordered(rows)
    head = "| dataset | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for d in datasets:
        cells = []
        for m in methods:
            if (d, m) in stats:
                mean, ci, n = stats[(d, m)]
                cells.append(f"{mean:.3f} ± {ci:.3f}")
            else:
                cells.append("–")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_line(rows: list[dict]) -> str:
    parts = []
    seen = OrderedDict()
    for r in rows:
        d = r.get("experiment_dataset", r["dataset"])
        seen.setdefault(d, set()).add((r["protocol"], r["ways"], r["shots"], r["queries"],
                                       r["n_tasks"]))
    for d, s in seen.items():
        protocol = sorted(s)[0][0]
        ways = sorted({x[1] for x in s})
        shots = sorted({x[2] for x in s})
        tasks = sum(x[4] for x in s) if len(s) > 1 else sorted(s)[0][4]
        parts.append(f"{d}: {protocol}, {','.join(map(str, ways))}-way, "
                     f"{','.join(map(str, shots))}-shot, {tasks} tasks per method and seed")
    return "; ".join(parts)


def bar_figure(rows: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: accuracy per dataset and method with 95 % CI whiskers, chance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = pooled(rows)
    datasets, methods = _ordered(rows)
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(datasets), 3.6), dpi=120)
    width = 0.8 / max(1, len(methods))
    colours = {"zeroshot": "#9e9e9e", "classical": "#1f77b4", "mamf": "#d62728",
               "fomaml": "#2ca02c"}
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, d in enumerate(datasets):
            if (d, m) in stats:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(stats[(d, m)][0])
                es.append(stats[(d, m)][1])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=METHOD_LABELS[m], color=colours[m])
    for i, d in enumerate(datasets):
        ways = [r["ways"] for r in rows if r.get("experiment_dataset", r["dataset"]) == d]
        chance = float(np.mean([1.0 / w for w in ways]))
        ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("query accuracy (mean ± 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title or "few-shot accuracy (dotted: chance)")
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
