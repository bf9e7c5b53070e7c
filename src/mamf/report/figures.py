"""The report's figures, drawn from the same estimates as its tables (`mamf.report.compare`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mamf import stats
from mamf.report.common import colour, in_order, label
from mamf.report.compare import Headline, compare, headline, ordered
from mamf.results import Row
from mamf.system.io import make_folder, writing


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


def bar_figure(rows: list[Row], path: Path, title: str = "") -> Path:
    """Grouped bars: accuracy per dataset and method with 95 % interval whiskers over the cells
    all the dataset's methods have, chance marked. Where a setting (protocol, ways, shots)
    differs within a dataset, as in the accuracy table each gets its own group of bars, in one
    panel per dataset: no bar pools two settings."""
    table = headline(rows)
    methods = ordered(rows)[1]
    if not table.varying:
        groups = [[((d, s), d) for (d, s) in table.entries]]
        return _bars(table, methods, groups, [""], path,
                     title or "few-shot accuracy (dotted: chance)")
    datasets = list(dict.fromkeys(d for d, _ in table.entries))
    groups = [[((d, s), table.name(s)) for (dd, s) in table.entries if dd == d]
              for d in datasets]
    return _bars(table, methods, groups, datasets, path,
                 title or "few-shot accuracy (dotted: chance)")


def _bars(table: Headline, methods: list[str], panels: list[list[tuple[tuple, str]]],
          names: list[str], path: Path, title: str) -> Path:
    """One panel of grouped bars per entry of `panels` ((entry, its tick label) each)."""
    plt = pyplot()
    est = table.estimates()
    widest = max(len(p) for p in panels)
    width_in = max(5.2, 1.6 + 2.2 * widest)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width_in, 3.6 * len(panels)), dpi=120,
                             squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, groups, name in zip(axes[:, 0], panels, names):
        for j, m in enumerate(methods):
            xs, ys, es = [], [], []
            for i, ((d, s), _) in enumerate(groups):
                if (d, s, m) in est:
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(est[(d, s, m)].mean)
                    es.append(_whisker(est[(d, s, m)]))
            ax.bar(xs, ys, width, yerr=es, capsize=3, label=label(m), color=colour(m))
        for i, (entry, _) in enumerate(groups):
            ways = [r.ways for rs in table.entries[entry].values() for r in rs]
            if ways:
                chance = float(np.mean([1.0 / w for w in ways]))
                ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="dotted",
                          linewidth=1)
        ax.set_xticks(range(len(groups)), [tick for _, tick in groups])
        ax.set_ylabel("query accuracy (mean ± 95% CI)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}: {name}" if name else title)
    # as many legend columns as the figure's width holds, so no label is cut off
    longest = max((len(label(m)) for m in methods), default=1)
    ncol = max(1, min(len(methods), int(width_in / (0.45 + 0.075 * longest))))
    axes[-1, 0].legend(fontsize=8, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, -0.12))
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


def curve_figure(rows: list[Row], dataset: str, path: Path) -> Path:
    """Accuracy against task size n, one line per method with its 95 % band (the MAMF paper's figures' form).
    At each n the methods are compared over the (shots, seed, split) cells they all have."""
    plt = pyplot()
    mine = [r for r in rows if r.dataset_name == dataset]
    ns_all = sorted({r.ways for r in mine})
    by: dict[str, dict[int, dict[int, list[float]]]] = {}
    for n in ns_all:
        for r in compare([r for r in mine if r.ways == n]).compared:
            by.setdefault(r.method, {}).setdefault(n, {}).setdefault(r.seed, []).extend(
                r.task_accs)
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
