"""The report's "Samplers against uniform" section (docs/method.md, "Task samplers", "Statistics").

Every task sampler of a method is compared with uniform, paired over the same test tasks (the
test tasks of a dataset, task size and seed are the same whatever trained the model), and
accuracy is broken down by how alike a test task's classes are (tertiles of `task_similarity`,
the mean pairwise prompt similarity under the pretrained model), so a reader sees where a sampler
helps: on tasks of similar classes, or of dissimilar ones.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from mamf import stats
from mamf.methods.presentation import ordered as method_order
from mamf.report.common import holm_line
from mamf.report.common import label as _label
from mamf.report.compare import cell_of
from mamf.results import Row
from mamf.tasks import DEFAULT_SAMPLER as DEFAULT  # the other samplers are compared with it

TERTILES = ("dissimilar (easy)", "middle", "similar (hard)")


NOT_PAIRED_BY = ("run", "alpha")
"""What a sampler's row and its uniform twin may differ by besides the sampler: the run folders
each trained into, and the mix (the rows here are the trained weights, unmixed or at alpha 1)."""


def _pairs(rows: list[Row]):
    """(dataset, method, sampler, seed, its row, uniform's row) for every row of a sampler
    other than uniform whose uniform twin (the same key but for the sampler and NOT_PAIRED_BY)
    is there."""
    index = {r.key.without(*NOT_PAIRED_BY): r for r in rows}
    for k, row in index.items():
        if k.sampler in (None, DEFAULT):
            continue
        twin = index.get(k._replace(sampler=DEFAULT))
        if twin is not None and len(twin.task_accs) == len(row.task_accs):
            yield k.dataset, k.method, k.sampler, k.seed, row, twin


def _ordered_samplers(rows: list[Row]) -> list[str]:
    present = OrderedDict.fromkeys(r.sampler for r in rows)
    return [DEFAULT] * (DEFAULT in present) + [s for s in present if s not in (None, DEFAULT)]


def against_uniform(rows: list[Row]) -> dict[tuple, dict]:
    """(dataset, method, sampler) -> the seed-level estimate of sampler - uniform over the same
    test tasks (`estimate`), its mean, 95 % half-width, seeds and pairs, and its verdict,
    Holm-adjusted over every comparison returned."""
    diffs: dict[tuple, dict[int, list[float]]] = OrderedDict()
    for d, m, s, seed, row, twin in _pairs(rows):
        diffs.setdefault((d, m, s), {}).setdefault(seed, []).extend(
            a - b for a, b in zip(row.task_accs, twin.task_accs))
    est = {key: stats.estimate(by_seed) for key, by_seed in diffs.items()}
    adjusted = stats.verdicts(list(est.values()))
    return {key: {"estimate": e, "mean": e.mean, "ci95": e.ci95, "seeds": e.seeds,
                  "pairs": e.tasks, "verdict": v} for (key, e), v in zip(est.items(), adjusted)}


def tertile_bounds(rows: list[Row], dataset: str) -> tuple[float, float] | None:
    """The 1/3 and 2/3 quantiles of the dataset's test tasks' prompt similarity (each task
    counted once, however many methods and samplers met it); None without similarities."""
    tasks = {}
    for r in rows:
        if r.dataset_name == dataset and r.task_similarity is not None:
            tasks[cell_of(r)] = r.task_similarity
    values = [v for sims in tasks.values() for v in sims if v is not None]
    if len(values) < 3:
        return None
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    return float(low), float(high)


def tertile(similarity: float, bounds: tuple[float, float]) -> int:
    return 0 if similarity <= bounds[0] else 1 if similarity <= bounds[1] else 2


def by_tertile(rows: list[Row], dataset: str, bounds: tuple[float, float]) -> dict:
    """(method, sampler) -> per tertile: seed -> the accuracies, and (samplers other than
    uniform) seed -> the paired differences to uniform, of the dataset's test tasks there."""
    accs: dict[tuple, list[dict]] = OrderedDict()
    for r in rows:
        if r.dataset_name != dataset or r.task_similarity is None:
            continue
        thirds = accs.setdefault((r.method, r.sampler), [{}, {}, {}])
        for acc, sim in zip(r.task_accs, r.task_similarity):
            if sim is not None:  # a one-class task has no pairwise similarity
                thirds[tertile(sim, bounds)].setdefault(r.seed, []).append(acc)
    diffs: dict[tuple, list[dict]] = {}
    for d, m, s, seed, row, twin in _pairs(rows):
        if d != dataset or row.task_similarity is None:
            continue
        thirds = diffs.setdefault((m, s), [{}, {}, {}])
        for a, b, sim in zip(row.task_accs, twin.task_accs, row.task_similarity):
            if sim is not None:
                thirds[tertile(sim, bounds)].setdefault(seed, []).append(a - b)
    return {key: {"accs": value, "diffs": diffs.get(key)} for key, value in accs.items()}


def _entry(accs: dict, diffs: dict | None) -> str:
    """One tertile's entry: mean ± interval, and the paired difference to uniform."""
    if not accs:
        return "–"
    text = stats.interval(stats.estimate(accs))
    if diffs:
        text += f" ({stats.interval(stats.estimate(diffs), signed=True)})"
    return text


def samplers_section(rows: list[Row]) -> list[str]:
    """Markdown lines of the section; none when no method ran with a sampler besides uniform."""
    compared = against_uniform(rows)
    if not compared:
        return []
    datasets = list(OrderedDict.fromkeys(r.dataset_name for r in rows))
    order = {m: i for i, m in enumerate(method_order())}
    samplers = _ordered_samplers(rows)
    keys = sorted(compared, key=lambda k: (datasets.index(k[0]), order.get(k[1], len(order)),
                                           samplers.index(k[2])))
    lines = ["## Samplers against uniform", "",
             "Each task sampler's meta-test accuracy minus uniform sampling's, paired over the "
             "same test tasks (same dataset, method, task size and seed). *holds*: the sampler "
             "beats uniform; *does not hold*: uniform is better; *inconclusive*: neither is "
             "shown.", "",
             "| dataset | method | sampler | sampler − uniform | seeds | pairs | verdict |",
             "|---|---|---|---|---|---|---|"]
    for d, m, s in keys:
        c = compared[(d, m, s)]
        e = c["estimate"]
        lines.append(f"| {d} | {_label(m)} | {s} | {stats.interval(e, signed=True)} | "
                     f"{c['seeds']} | {c['pairs']} | {stats.worded(c['verdict'], e)} |")
    estimates = [compared[k]["estimate"] for k in keys]
    lines += ["", stats.coverage_line(estimates), holm_line(len(estimates))]
    for d in OrderedDict.fromkeys(k[0] for k in keys):
        bounds = tertile_bounds(rows, d)
        if bounds is None:
            continue
        table = by_tertile(rows, d, bounds)
        methods = list(OrderedDict.fromkeys(k[1] for k in keys if k[0] == d))
        lines += ["", f"**{d}: accuracy by test-task difficulty.** Tertiles of a test task's "
                  "mean pairwise prompt similarity (`task_similarity`): dissimilar ≤ "
                  f"{bounds[0]:.3f} < middle ≤ {bounds[1]:.3f} < similar. Mean ± 95 % interval "
                  "(over seeds, as above); in brackets the paired difference to uniform on the "
                  "same tasks. Descriptive: these cells carry no verdicts.", "",
                  f"| method | sampler | {' | '.join(TERTILES)} |", "|---|---|---|---|---|"]
        for m in methods:
            for s in samplers:
                entry = table.get((m, s))
                if entry is None:
                    continue
                shown = [_entry(entry["accs"][k], entry["diffs"][k] if entry["diffs"] else None)
                         for k in range(3)]
                lines.append(f"| {_label(m)} | {s} | {' | '.join(shown)} |")
    return lines
