"""The report's overfitting sections: training-split against test-split accuracy per method, and
accuracy against the WiSE-FT alpha (`metatest.interpolate`).

The report's main tables keep one measurement of the trained weights per cell: rows on the
test (or dev) split, at alpha None (no mix), or at alpha 1 where a method has no unmixed row
(the same weights; `selection.one_measurement`). Rows on the training split and at other
alphas appear only here.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from mamf import stats
from mamf.report.common import in_order, label, safe_name
from mamf.report.figures import method_lines, pyplot, save
from mamf.results import Row, row_alpha


def _trained_weights(rows: list[Row]) -> list[Row]:
    return [r for r in rows if row_alpha(r) in (None, 1.0)]


def split_table(rows: list[Row]) -> list[str]:
    """Per dataset and method: accuracy on training-split tasks, on held-out tasks, the gap."""
    rows = _trained_weights(rows)
    if not any(r.split == "train" for r in rows):
        return []
    held = sorted({r.split for r in rows} - {"train"})
    groups: dict[tuple, dict[str, dict[int, list[float]]]] = OrderedDict()
    for r in rows:
        groups.setdefault((r.dataset_name, r.method), {}).setdefault(
            "train" if r.split == "train" else "held", {}).setdefault(r.seed, []).extend(
            r.task_accs)
    lines = ["## Training-split against test-split tasks", "",
             "Accuracy on tasks drawn from the training split (images or classes the methods "
             f"trained on) beside tasks from the {'/'.join(held) or 'test'} split; a large gap "
             "is overfitting. The gap is the training-split mean minus the test-split mean, "
             "seed by seed.", "",
             "| dataset | method | training split | test split | gap | seeds |",
             "|---|---|---|---|---|---|"]
    datasets = list(OrderedDict.fromkeys(d for d, _ in groups))
    gaps = []
    for d in datasets:
        for m in in_order({m for dd, m in groups if dd == d}):
            accs = groups[(d, m)]
            shown = [stats.interval(stats.estimate(accs[k])) if k in accs else "-"
                     for k in ("train", "held")]
            gap, seeds = "-", "-"
            if len(accs) == 2:
                e = stats.difference(accs["train"], accs["held"])
                gaps.append(e)
                gap, seeds = stats.interval(e, signed=True), str(e.seeds)
            lines.append(f"| {d} | {label(m)} | {shown[0]} | {shown[1]} | {gap} | {seeds} |")
    return lines + (["", stats.coverage_line(gaps)] if gaps else [])


def alpha_curves(rows: list[Row]) -> dict[str, dict[str, dict[float, list[float]]]]:
    """dataset -> method -> alpha -> seed -> held-out task accuracies, for methods scored at two
    or more alphas."""
    out: dict[str, dict[str, dict[float, dict[int, list[float]]]]] = OrderedDict()
    for r in rows:
        if row_alpha(r) is not None and r.split != "train":
            out.setdefault(r.dataset_name, {}).setdefault(r.method, {}).setdefault(
                row_alpha(r), {}).setdefault(r.seed, []).extend(r.task_accs)
    return {d: {m: a for m, a in ms.items() if len(a) >= 2} for d, ms in out.items()
            if any(len(a) >= 2 for a in ms.values())}


def alpha_figure(curves: dict[str, dict[float, dict[int, list[float]]]], dataset: str, path: Path) -> Path:
    """Accuracy against alpha (0: zero-shot weights, 1: trained), one line per method."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    method_lines(ax, curves)
    ax.set_xlabel("alpha: (1 - alpha) zero-shot + alpha trained weights")
    ax.set_ylabel("query accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{dataset}: WiSE-FT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, path)


def overfitting_sections(rows: list[Row], figures: Path) -> tuple[list[str], dict[str, Path]]:
    """The sections' markdown lines and their figures (none when the rows hold neither)."""
    lines, pngs = split_table(rows), {}
    curves = alpha_curves(rows)
    if curves:
        lines += ([""] if lines else []) + [
            "## WiSE-FT: accuracy against alpha", "",
            "Each test task scored with (1 - alpha) x the weights training started from + alpha "
            "x the trained weights, before the task's adaptation; with LoRA alpha scales the "
            "adapter's update (figures below, `alpha-*`)."]
        for d, by_method in curves.items():
            safe = safe_name(d)
            pngs[f"alpha-{safe}"] = alpha_figure(by_method, d, figures / f"alpha-{safe}.png")
    return lines, pngs
