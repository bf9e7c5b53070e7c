"""Claim 1's mechanism: accuracy against the strength of a spurious feature.

The `spurious` builder sets rho, the share of training images on their class's own background
colour; at test the colour is independent of the class. Each such dataset is one rho, and the
datasets whose classical fine-tuning trains the same number of values (one capacity) form one
sweep. If classical fine-tuning lets a model exploit the shortcut (the paper's account of claim
1), its test accuracy falls more than MAMF's as rho grows, and more so at higher capacity. Per
capacity the section gives MAMF - classical at every rho, and the shortcut's cost to each method
(its accuracy at the strongest rho minus at the weakest) with the difference of the two costs.
Every interval is over seeds (`mamf.stats`); the verdicts of each table are Holm-adjusted.
"""

from __future__ import annotations

import inspect
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamf import stats
from mamf.report.common import colour, holm_line, label, md
from mamf.report.compare import by_seed, compare, method_estimates, paired
from mamf.report.figures import _whisker, pyplot, save
from mamf.report.files import row_config
from mamf.results import Row
from mamf.runs.experiment_file import declared_datasets
from mamf.stats import Estimate
from mamf.system.errors import MamfError

BUILDER = "spurious"
# the paper's named methods: like the claims (report/claims.py), this section is about them
TRAINED = ("classical", "mamf", "fomaml")
METHODS = ("zeroshot", *TRAINED)


def _default_rho() -> float:
    from mamf.data.builders.spurious import build_spurious

    return float(inspect.signature(build_spurious).parameters["rho"].default)


def _from_experiment(folder: Path) -> dict[str, float]:
    """rho of each `build: spurious` entry of the experiment.yaml beside the rows (its entries
    only: no plug-in, no torch)."""
    path = folder / "experiment.yaml"
    if not path.is_file():
        return {}
    try:
        entries = declared_datasets(path)
    except MamfError:  # an unreadable file: the data folders may still say
        return {}
    return {d.name: float(d.build_options.get("rho", _default_rho())) for d in entries
            if d.build == BUILDER}


def _from_data(row: Row, folder: Path) -> float | None:
    """rho as the row's data folder records it (`.mamf-dataset.json`, written by the builder)."""
    config = row_config(row, folder)
    root = ((config or {}).get("data") or {}).get("root")
    record = Path(root) / ".mamf-dataset.json" if root else None
    if record is None or not record.is_file():
        return None
    try:
        meta = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return float(meta["rho"]) if meta.get("builder") == BUILDER and "rho" in meta else None


def shortcut_strengths(rows: list[Row], folder: Path | None) -> dict[str, float]:
    """Dataset -> rho, for the datasets built by the spurious builder (others are left out)."""
    if folder is None:
        return {}
    folder = Path(folder)
    found = _from_experiment(folder)
    first = {}  # one row a dataset: its rows share a data folder, so its record is read once
    for r in rows:
        first.setdefault(r.dataset_name, r)
    for d, r in first.items():
        if d not in found:
            rho = _from_data(r, folder)
            if rho is not None:
                found[d] = rho
    return {d: rho for d, rho in found.items() if d in first}


@dataclass
class Sweep:
    """One capacity's datasets in order of rho, with the section's estimates."""

    capacity: int
    datasets: list[str]
    rhos: list[float]
    accuracy: dict[tuple[str, str], Estimate]  # (dataset, method) -> pooled over seeds
    gap: dict[str, Estimate]                    # dataset -> MAMF - classical, paired
    cost: dict[str, Estimate]                   # method -> acc at the top rho - at the bottom
    cost_gap: Estimate | None                   # MAMF's cost - classical's, by seed


def _capacity(rows: list[Row]) -> int | None:
    """The values classical fine-tuning (else any trained method) trains on these rows."""
    for method in TRAINED:
        counts = {r.trainable_params for r in rows if r.method == method}
        counts.discard(None)
        if counts:
            return max(counts)
    return None


def _seed_means(rows: list[Row], method: str) -> dict[int, float]:
    return {s: float(np.mean(v)) for s, v in by_seed([r for r in rows if r.method == method])
            .items() if v}


def sweeps(rows: list[Row], strengths: dict[str, float]) -> list[Sweep]:
    """The sweeps over rho, one per capacity (smallest first), each with at least two values of
    rho."""
    groups: dict[int, list[str]] = OrderedDict()
    for d in sorted(strengths, key=lambda d: strengths[d]):
        mine = [r for r in rows if r.dataset_name == d]
        capacity = _capacity(mine)
        if capacity is not None:
            groups.setdefault(capacity, []).append(d)
    out = []
    for capacity, datasets in sorted(groups.items()):
        if len({strengths[d] for d in datasets}) < 2:
            continue
        mine = [r for r in rows if r.dataset_name in datasets]
        shared = compare(mine, [m for m in METHODS if any(r.method == m for r in mine)]).compared
        accuracy = method_estimates(shared)
        gap = paired(shared, "mamf", "classical")
        low, high = datasets[0], datasets[-1]
        cost, ends = {}, {}
        for method in TRAINED:
            a = _seed_means([r for r in shared if r.dataset_name == high], method)
            b = _seed_means([r for r in shared if r.dataset_name == low], method)
            seeds = sorted(set(a) & set(b))
            if seeds:
                ends[method] = {s: a[s] - b[s] for s in seeds}
                cost[method] = stats.estimate({s: [ends[method][s]] for s in seeds})
        cost_gap = None
        if "mamf" in ends and "classical" in ends:
            seeds = sorted(set(ends["mamf"]) & set(ends["classical"]))
            if seeds:
                cost_gap = stats.estimate({s: [ends["mamf"][s] - ends["classical"][s]]
                                           for s in seeds})
        out.append(Sweep(capacity, datasets, [strengths[d] for d in datasets], accuracy, gap,
                         cost, cost_gap))
    return out


def _values(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 10**5 else f"{n:,}"


def spurious_section(rows: list[Row], folder: Path | None,
                     figures: Path) -> tuple[list[str], dict[str, Path]]:
    """The section's markdown lines and its figure; nothing where no spurious sweep is found."""
    found = sweeps(rows, shortcut_strengths(rows, folder))
    if not found:
        return [], {}
    methods = [m for m in METHODS if any(m in {k[1] for k in s.accuracy} for s in found)]
    lines = ["## Claim 1's mechanism: a spurious feature of known strength", "",
             "rho: the share of training images on their class's own background colour (0.1: "
             "none beyond chance, 1.0: colour as good as shape); dev and test colours are "
             "independent of the class. If classical fine-tuning exploits the shortcut, it loses "
             "more accuracy than MAMF as rho grows.", ""]
    head = "| capacity | rho | " + " | ".join(label(m) for m in methods) + \
        " | MAMF − classical | verdict |"
    table = [head, "|" + "---|" * (len(methods) + 4)]
    gaps = [(s, d) for s in found for d in s.datasets if d in s.gap]
    verdicts = dict(zip([d for _, d in gaps], stats.verdicts([s.gap[d] for s, d in gaps])))
    for s in found:
        for d, rho in zip(s.datasets, s.rhos):
            shown = [stats.interval(s.accuracy[(d, m)]) if (d, m) in s.accuracy else "–"
                     for m in methods]
            e = s.gap.get(d)
            table.append(f"| {_values(s.capacity)} | {rho:g} | " + " | ".join(shown) +
                         f" | {stats.interval(e, signed=True) if e else '–'} | "
                         f"{stats.worded(verdicts[d], e) if e else '–'} |")
    lines += table + ["", holm_line(len(gaps)), ""]
    costs = [s for s in found if s.cost_gap is not None]
    if costs:
        lines += ["The shortcut's cost, accuracy at the strongest rho minus at the weakest (per "
                  "seed, then t over seeds); the last columns ask whether MAMF loses less than "
                  "classical fine-tuning (*holds*: MAMF's cost is smaller):", "",
                  "| capacity | rho | classical FT | MAMF | FOMAML | MAMF − classical | verdict |",
                  "|---|---|---|---|---|---|---|"]
        judged = stats.verdicts([s.cost_gap for s in costs])
        for s, v in zip(costs, judged):
            shown = [stats.interval(s.cost[m], signed=True) if m in s.cost else "–"
                     for m in TRAINED]
            lines.append(f"| {_values(s.capacity)} | {s.rhos[0]:g} → {s.rhos[-1]:g} | " +
                         " | ".join(shown) + f" | {stats.interval(s.cost_gap, signed=True)} | "
                         f"{md(stats.worded(v, s.cost_gap))} |")
        lines += ["", holm_line(len(costs)), ""]
    return lines, {"spurious": spurious_figure(found, methods, figures / "spurious.png")}


def spurious_figure(found: list[Sweep], methods: list[str], path: Path) -> Path:
    """Test accuracy against rho, one panel per capacity, one line per method (95 % over seeds)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(found), figsize=(4.8 * len(found), 3.8), dpi=120,
                             squeeze=False, sharey=True)
    for ax, s in zip(axes[0], found):
        for m in methods:
            points = [(rho, s.accuracy[(d, m)]) for d, rho in zip(s.datasets, s.rhos)
                      if (d, m) in s.accuracy]
            if points:
                ax.errorbar([p[0] for p in points], [p[1].mean for p in points],
                            yerr=[_whisker(p[1]) for p in points], fmt="o-", capsize=3,
                            color=colour(m), label=label(m), linewidth=0.9)
        ax.set_xlabel("rho (training images on their class's colour)")
        ax.set_title(f"{_values(s.capacity)} trained values", fontsize=9)
    axes[0][0].set_ylabel("test accuracy (95% CI over seeds)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Claim 1's mechanism: does classical fine-tuning take the shortcut?",
                 fontsize=10)
    fig.tight_layout()
    return save(fig, plt, path)
