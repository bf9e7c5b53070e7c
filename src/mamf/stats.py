"""Every interval, test and verdict mamf reports, written once (docs/method.md, "Statistics").

The unit of replication is the training run, i.e. the seed: the test tasks of one seed share its
training, so they say nothing about how much another training run would differ. Hence:

- `estimate(by_seed)` -- the mean of per-seed means and its 95 % interval. With two or more
  seeds: Student's t over the per-seed means (df = seeds - 1); tasks are nested in seeds, since
  each seed's mean already carries its own task noise. With one seed: t over that seed's tasks,
  and the estimate says it rests on one training run (`level == "tasks"`).
- `paired(a_by_seed, b_by_seed)` -- the same for a - b over the same test tasks.
- `holm(p)` and `verdicts(estimates)` -- verdicts of a table of several comparisons, with
  Holm's step-down correction of their p-values (family-wise error 5 %).
- `mean_ci95(values)` -- the t interval over plain values (one row's tasks: one training run).

No interval uses 1.96: small samples get t quantiles (2.26 for 10 values, 2.78 for 5).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _scipy

LEVEL = 0.95
ALPHA = 1 - LEVEL

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

SEEDS, TASKS = "seeds", "tasks"  # what an estimate's interval is over
SAME = 1e-9  # values closer than this are the same accuracy (0.6 - 0.4 vs 0.5 - 0.3)


def t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with `df` degrees of freedom."""
    return float(_scipy.t.ppf(1 - ALPHA / 2, df))


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95 % t interval of the mean: t(T-1) * sample std / sqrt(T); 0 for a
    single value (a results row of one task: the row's own field; reports never read it)."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) < 2:
        return 0.0
    return float(t_quantile(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % t half-width over plain values; (nan, nan) for no values."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), ci95(a)


@dataclass(frozen=True)
class Estimate:
    """A mean (or mean difference) with its 95 % interval and what that interval covers.

    `seeds` and `tasks`: how many training runs and test tasks it rests on; `level`: `seeds`
    (interval over per-seed means) or `tasks` (one seed: interval over its tasks, which covers
    test-task noise only); `p`: two-sided p-value of "the mean is 0" (for differences);
    `spread`: False when every value is identical (a degenerate interval of 0, shown as such).
    `ci95` is infinite where no interval can be formed (a single value)."""

    mean: float
    ci95: float
    seeds: int
    tasks: int
    level: str
    p: float
    spread: bool

    @property
    def one_run(self) -> bool:
        return self.seeds == 1

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95


def _one_sample_t(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, 95 % t half-width and two-sided p of mean = 0 (inf and 1 for one value)."""
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.inf, 1.0
    se = float(values.std(ddof=1)) / math.sqrt(len(values))
    df = len(values) - 1
    if se == 0.0:
        return mean, 0.0, (1.0 if mean == 0.0 else 0.0)
    return mean, t_quantile(df) * se, float(2 * _scipy.t.sf(abs(mean) / se, df))


def estimate(by_seed: Mapping[Hashable, Sequence[float]]) -> Estimate:
    """The seed-level estimate of values grouped by seed (see the module's docstring).

    Each seed weighs the same, however many tasks it holds: the question is how a new training
    run would do, and every seed is one run."""
    groups = [np.asarray(v, dtype=np.float64) for v in by_seed.values() if len(v)]
    if not groups:
        raise ValueError("estimate needs at least one seed with values")
    tasks = sum(len(g) for g in groups)
    spread = bool(np.ptp(np.concatenate(groups)) > SAME)
    if len(groups) >= 2:
        mean, ci, p = _one_sample_t(np.array([g.mean() for g in groups]))
        return Estimate(mean, ci, len(groups), tasks, SEEDS, p, spread)
    mean, ci, p = _one_sample_t(groups[0])
    return Estimate(mean, ci, 1, tasks, TASKS, p, spread)


def paired(a_by_seed: Mapping[Hashable, Sequence[float]],
           b_by_seed: Mapping[Hashable, Sequence[float]]) -> Estimate:
    """The estimate of a - b, task by task, over the seeds both have (same tasks, same order)."""
    diffs = {}
    for seed, a in a_by_seed.items():
        if seed not in b_by_seed:
            continue
        b = b_by_seed[seed]
        if len(a) != len(b):
            raise ValueError(f"seed {seed}: {len(a)} and {len(b)} tasks cannot be paired")
        diffs[seed] = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if not diffs:
        raise ValueError("paired needs at least one seed both sides have")
    return estimate(diffs)


def difference(a_by_seed: Mapping[Hashable, Sequence[float]],
               b_by_seed: Mapping[Hashable, Sequence[float]]) -> Estimate:
    """Mean of a minus mean of b where their tasks differ (a training-split gap, say). With two
    or more shared seeds: t over the per-seed differences of means; with one: Welch's t interval
    over the two sets of tasks (one training run)."""
    shared = [s for s in a_by_seed if s in b_by_seed and len(a_by_seed[s]) and len(b_by_seed[s])]
    if not shared:
        raise ValueError("difference needs at least one seed both sides have")
    if len(shared) >= 2:
        e = estimate({s: [float(np.mean(a_by_seed[s]) - np.mean(b_by_seed[s]))] for s in shared})
        tasks = sum(len(a_by_seed[s]) + len(b_by_seed[s]) for s in shared)
        return Estimate(e.mean, e.ci95, e.seeds, tasks, SEEDS, e.p, e.spread)
    a = np.asarray(a_by_seed[shared[0]], dtype=np.float64)
    b = np.asarray(b_by_seed[shared[0]], dtype=np.float64)
    mean = float(a.mean() - b.mean())
    spread = bool(np.ptp(a) > SAME or np.ptp(b) > SAME)  # within-group spread is what is measured
    if len(a) < 2 or len(b) < 2:
        return Estimate(mean, math.inf, 1, len(a) + len(b), TASKS, 1.0, spread)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Estimate(mean, 0.0, 1, len(a) + len(b), TASKS, 1.0 if mean == 0 else 0.0, spread)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = float(2 * _scipy.t.sf(abs(mean) / se, df))
    return Estimate(mean, float(_scipy.t.ppf(1 - ALPHA / 2, df)) * se, 1, len(a) + len(b), TASKS,
                    p, spread)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest p times (m - i + 1),
    made monotone and capped at 1. Rejecting where the adjusted p < 0.05 keeps the chance of
    any false "holds" or "does not hold" in the family at 5 %."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def verdict_of(mean: float, p: float) -> str:
    """`holds` (the difference is above 0) or `does not hold` (below) when p < 0.05; else
    `inconclusive`. For one comparison this is the same as asking whether the 95 % interval
    excludes 0."""
    if p < ALPHA and mean > 0:
        return HOLDS
    if p < ALPHA and mean < 0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def verdicts(estimates: Sequence[Estimate]) -> list[str]:
    """The verdict of each comparison of one table, Holm-adjusted over the table's comparisons."""
    adjusted = holm([e.p for e in estimates])
    return [verdict_of(e.mean, p) for e, p in zip(estimates, adjusted)]


def verdict(mean: float, ci: float) -> str:
    """`holds` when an interval lies above 0, `does not hold` when below, else `inconclusive`
    (a single comparison read off its interval)."""
    if mean - ci > 0:
        return HOLDS
    if mean + ci < 0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


def worded(verdict_text: str, e: Estimate) -> str:
    """A verdict as a table shows it: one that rests on a single training run says so."""
    return f"{verdict_text} (one run)" if e.one_run else verdict_text


def interval(e: Estimate, digits: int = 3, signed: bool = False) -> str:
    """`0.495 ± 0.028`; `0.200 (no spread)` where every value is the same, `0.7 (one value)`
    where no interval exists, so a degenerate interval never reads as certainty."""
    sign = "+" if signed else ""
    mean = f"{e.mean:{sign}.{digits}f}"
    if not e.spread and e.tasks > 1:
        return f"{mean} (no spread)"
    if math.isinf(e.ci95):
        return f"{mean} (one value)"
    shown = digits  # an interval too small for `digits` gets the digits it needs, not "± 0.000"
    while round(e.ci95, shown) == 0 and shown < digits + 3:
        shown += 1
    if round(e.ci95, shown) == 0:  # tasks differ, but every seed's mean is the same (to rounding)
        return f"{mean} (no spread over {'seeds' if e.level == SEEDS else 'tasks'})"
    return f"{e.mean:{sign}.{shown}f} ± {e.ci95:.{shown}f}"


def coverage_line(estimates: Sequence[Estimate]) -> str:
    """One sentence saying what a table's intervals are over: seeds (and tasks) or one run."""
    if not estimates:
        return ""
    seeds = sorted({e.seeds for e in estimates})
    tasks = sorted({e.tasks for e in estimates})

    def span(v: list[int]) -> str:
        return str(v[0]) if len(v) == 1 else f"{v[0]} to {v[-1]}"

    if seeds == [1]:
        return (f"Intervals: 95 % t over the {span(tasks)} test tasks of **one training run** "
                "(a single seed): they cover test-task noise only, not another training run, and "
                "every verdict speaks of these tasks of this run.")
    text = (f"Intervals: 95 % t over the per-seed means of {span(seeds)} seeds "
            f"({span(tasks)} test tasks in all, nested in their seeds)")
    if 1 in seeds:
        text += "; entries marked *(one run)* rest on one seed: t over its tasks only"
    return text + "."


def slope(xs: Mapping[Hashable, float],
          by_group: Mapping[Hashable, Mapping[Hashable, Sequence[float]]]) -> Estimate:
    """The least-squares slope of a value against `xs` (group -> x, e.g. a dataset's zero-shot
    accuracy), fitted per seed over the groups that seed has, then t over the seeds' slopes
    (the seed is the unit of replication). `by_group`: group -> seed -> that seed's values there
    (their mean is the seed's point). Seeds with fewer than 3 groups are left out."""
    seeds = {s for g in by_group.values() for s in g}
    per_seed, tasks = {}, 0
    for s in seeds:
        points = [(xs[g], float(np.mean(v[s]))) for g, v in by_group.items()
                  if g in xs and s in v and len(v[s])]
        if len(points) < 3:
            continue
        x, y = np.array(points).T
        if np.ptp(x) == 0:
            continue
        per_seed[s] = [float(np.polyfit(x, y, 1)[0])]
        tasks += sum(len(v[s]) for g, v in by_group.items() if g in xs and s in v)
    if not per_seed:
        raise ValueError("slope needs a seed with 3 groups or more of distinct x")
    e = estimate(per_seed)
    return Estimate(e.mean, e.ci95, e.seeds, tasks, SEEDS if e.seeds > 1 else TASKS, e.p,
                    e.spread)
