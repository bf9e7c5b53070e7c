"""The report's figures, drawn from the same estimates as its tables (`mamf.report.compare`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mamf import stats
from mamf.io import make_folder, writing
from mamf.report.common import colour, in_order, label
from mamf.report.compare import compare, ordered, pooled
from mamf.results import dataset_name


def pyplot():
    from mamf.data.cache import third_party_caches

    third_party_caches()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, plt, path: Path, tight: bool = False) -> Path:
    """Write the figure atomically (a temporary file, then a rename); `tight`: the saved area
    grows to hold everything drawn (a legend below the axes)."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        with writing(path):
            fig.savefig(tmp, bbox_inches="tight" if tight else None)
            tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _whisker(e: stats.Estimate) -> float:
    return 0.0 if math.isinf(e.ci95) else e.ci95


def bar_figure(rows: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: accuracy per dataset and method with 95 % interval whiskers over the cells
    all the dataset's methods have, chance marked."""
    plt = pyplot()
    compared = compare(rows).compared
    est = pooled(compared)
    datasets, methods = ordered(rows)
    width_in = max(5.2, 1.6 + 2.2 * len(datasets))
    fig, ax = plt.subplots(figsize=(width_in, 3.6), dpi=120)
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, d in enumerate(datasets):
            if (d, m) in est:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(est[(d, m)].mean)
                es.append(_whisker(est[(d, m)]))
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=label(m), color=colour(m))
    for i, d in enumerate(datasets):
        ways = [r["ways"] for r in compared if dataset_name(r) == d]
        if ways:
            chance = float(np.mean([1.0 / w for w in ways]))
            ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("query accuracy (mean ± 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title or "few-shot accuracy (dotted: chance)")
    # as many legend columns as the figure's width holds, so no label is cut off
    longest = max((len(label(m)) for m in methods), default=1)
    ncol = max(1, min(len(methods), int(width_in / (0.45 + 0.075 * longest))))
    ax.legend(fontsize=8, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return save(fig, plt, path, tight=True)


def method_lines(ax, by: dict[str, dict]) -> None:
    """One line per method through the mean accuracy at each x, in a band of its 95 % interval;
    `by[method][x]` maps seed -> that seed's task accuracies."""
    for m in in_order(by):
        xs = sorted(by[m])
        est = [stats.estimate(by[m][x]) for x in xs]
        means = np.array([e.mean for e in est])
        cis = np.array([_whisker(e) for e in est])
        ax.plot(xs, means, marker="o", color=colour(m), label=label(m))
        ax.fill_between(xs, means - cis, means + cis, color=colour(m), alpha=0.18)


def curve_figure(rows: list[dict], dataset: str, path: Path) -> Path:
    """Accuracy against task size n, one line per method with its 95 % band (paper's form).
    At each n the methods are compared over the (shots, seed, split) cells they all have."""
    plt = pyplot()
    mine = [r for r in rows if dataset_name(r) == dataset]
    ns_all = sorted({r["ways"] for r in mine})
    by: dict[str, dict[int, dict[int, list[float]]]] = {}
    for n in ns_all:
        for r in compare([r for r in mine if r["ways"] == n]).compared:
            by.setdefault(r["method"], {}).setdefault(n, {}).setdefault(r["seed"], []).extend(
                r["task_accs"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    method_lines(ax, by)
    ax.plot(ns_all, [1 / n for n in ns_all], color="black", linestyle="dotted", label="chance")
    ax.set_xticks(ns_all)
    ax.set_xlabel("task size n (ways)")
    ax.set_ylabel("query accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(dataset)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, path)
