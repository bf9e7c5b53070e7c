"""The statistics, by hand on small numbers and against simulations with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mamf.stats import (
    ci95,
    coverage_line,
    difference,
    estimate,
    holm,
    interval,
    mean_ci95,
    paired,
    t_quantile,
    verdict,
    verdicts,
    worded,
)


def test_small_samples_use_t_not_1_96():
    assert t_quantile(9) == pytest.approx(2.2622, abs=1e-4)  # 10 values
    assert t_quantile(4) == pytest.approx(2.7764, abs=1e-4)  # 5 seeds
    values = [0.2, 0.4, 0.6, 0.8]
    sample_std = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    assert ci95(values) == pytest.approx(3.1824 * sample_std / 2, abs=1e-4)
    assert mean_ci95(values)[0] == 0.5
    assert ci95([0.7]) == 0.0 and mean_ci95([0.7]) == (0.7, 0.0)  # a row of one task
    mean, ci = mean_ci95([])
    assert math.isnan(mean) and math.isnan(ci)


def test_several_seeds_give_t_over_the_per_seed_means():
    by_seed = {1: [0.5, 0.7], 2: [0.8, 0.8, 0.8, 0.8], 3: [0.2]}  # unequal tasks per seed
    e = estimate(by_seed)
    means = [0.6, 0.8, 0.2]  # each seed one run: equal weight, however many tasks
    sd = float(np.std(means, ddof=1))
    assert e.mean == pytest.approx(np.mean(means))
    assert e.ci95 == pytest.approx(t_quantile(2) * sd / math.sqrt(3))
    assert (e.seeds, e.tasks, e.level, e.one_run) == (3, 7, "seeds", False)


def test_one_seed_gives_t_over_its_tasks_and_says_so():
    e = estimate({312: [0.5, 0.7, 0.6]})
    assert (e.seeds, e.tasks, e.level, e.one_run) == (1, 3, "tasks", True)
    assert e.ci95 == pytest.approx(ci95([0.5, 0.7, 0.6]))
    assert worded("holds", e) == "holds (one run)"
    line = coverage_line([e])
    assert "**one training run**" in line and "not another training run" in line
    assert "every verdict speaks of these tasks of this run" in line
    several = coverage_line([estimate({1: [0.5], 2: [0.6]}), e])
    assert "per-seed means of 1 to 2 seeds" in several and "*(one run)*" in several


def test_paired_pairs_task_by_task_within_seeds():
    e = paired({1: [0.9, 0.8], 2: [0.7, 0.7]}, {1: [0.5, 0.5], 2: [0.6, 0.6], 3: [0.1]})
    assert e.seeds == 2 and e.mean == pytest.approx((0.35 + 0.1) / 2)
    with pytest.raises(ValueError):
        paired({1: [0.1, 0.2]}, {1: [0.3]})
    with pytest.raises(ValueError):
        paired({1: [0.1]}, {2: [0.3]})


def _experiment(rng, seeds: int, tasks: int, effect: float, seed_sd: float, task_sd: float):
    """Paired differences: each training seed shifts all its tasks by a common amount."""
    return {s: effect + rng.normal(0, seed_sd) + rng.normal(0, task_sd, tasks)
            for s in range(seeds)}


def _pooled_z(by_seed) -> tuple[float, float]:
    """The interval mamf used before: every task of every seed pooled, 1.96 * sd / sqrt(T)."""
    values = np.concatenate(list(by_seed.values()))
    return float(values.mean()), 1.96 * float(values.std(ddof=1)) / math.sqrt(len(values))


def test_seeds_that_disagree_with_tasks_that_agree_are_inconclusive():
    # five training runs: two worse, three better; within each run 600 tasks agree closely
    shifts = [0.05, -0.04, 0.06, -0.03, 0.01]
    rng = np.random.default_rng(0)
    by_seed = {s: shift + rng.normal(0, 0.01, 600) for s, shift in enumerate(shifts)}
    e = estimate(by_seed)
    assert verdicts([e]) == ["inconclusive"]
    mean, half = _pooled_z(by_seed)  # the old pooled interval calls it a gain
    assert verdict(mean, half) == "holds"


def test_seeds_that_agree_still_hold():
    rng = np.random.default_rng(1)
    by_seed = _experiment(rng, seeds=5, tasks=200, effect=0.02, seed_sd=0.002, task_sd=0.1)
    assert verdicts([estimate(by_seed)]) == ["holds"]
    by_seed = _experiment(rng, seeds=5, tasks=200, effect=-0.02, seed_sd=0.002, task_sd=0.1)
    assert verdicts([estimate(by_seed)]) == ["does not hold"]


def test_the_interval_covers_the_true_mean_95_percent_of_the_time():
    """Known answer: true mean difference 0.01, training-run noise larger than the task noise's
    share. The seed-level interval covers it in about 95 % of experiments; the pooled one far
    less often."""
    rng = np.random.default_rng(2)
    covered = pooled_covered = 0
    trials = 600
    for _ in range(trials):
        by_seed = _experiment(rng, seeds=5, tasks=100, effect=0.01, seed_sd=0.02, task_sd=0.1)
        e = estimate(by_seed)
        covered += e.low <= 0.01 <= e.high
        mean, half = _pooled_z(by_seed)
        pooled_covered += mean - half <= 0.01 <= mean + half
    assert 0.92 <= covered / trials <= 0.98
    assert pooled_covered / trials < 0.75  # about 62 % expected: its se is 0.45 of the true one


def test_holm_against_hand_worked_numbers():
    # p sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, kept monotone
    assert holm([0.01, 0.5]) == pytest.approx([0.02, 0.5])
    assert holm([0.01]) == [0.01]
    # three "gains" at p = 0.02 each: each holds alone, none survives the correction of three
    e = estimate({1: [0.03], 2: [0.01], 3: [0.02], 4: [0.025], 5: [0.005]})
    assert verdicts([e]) == ["holds"]
    weak = [e.__class__(**{**e.__dict__, "p": 0.02}) for _ in range(3)]
    assert verdicts(weak) == ["inconclusive"] * 3


def test_degenerate_values_are_shown_as_such_not_as_certainty():
    flat = estimate({312: [0.2] * 475})
    assert not flat.spread and interval(flat) == "0.200 (no spread)"
    one = estimate({312: [0.7]})
    assert math.isinf(one.ci95) and interval(one) == "0.700 (one value)"
    assert verdicts([paired({1: [1.0]}, {1: [0.0]})]) == ["inconclusive"]
    assert interval(estimate({1: [0.5, 0.7]}), signed=True).startswith("+0.600 ± ")
    # seeds that agree to 1e-4: an interval that rounds to 0 gets the digits it needs
    close = estimate({1: [0.13500], 2: [0.13510], 3: [0.13505]})
    assert close.spread and interval(close) == "0.1351 ± 0.0001"
    # tasks that differ within seeds whose means agree (up to rounding): no spread over seeds
    agree = estimate({1: [0.1, 0.2, 0.3], 2: [0.3, 0.1, 0.2], 3: [0.2, 0.3, 0.1]})
    assert agree.spread and interval(agree) == "0.200 (no spread over seeds)"


def test_difference_of_unpaired_means():
    # one seed: Welch's interval over the two sets of tasks
    a, b = [0.9, 0.8, 0.85], [0.5, 0.6]
    e = difference({1: a}, {1: b})
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 2
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1)
    from scipy import stats as sp

    assert e.mean == pytest.approx(0.85 - 0.55) and e.one_run
    assert e.ci95 == pytest.approx(sp.t.ppf(0.975, df) * math.sqrt(va + vb))
    # two seeds: t over the per-seed differences of means
    e2 = difference({1: a, 2: [0.7]}, {1: b, 2: [0.6, 0.6]})
    assert e2.seeds == 2 and e2.mean == pytest.approx((0.3 + 0.1) / 2)
    assert e2.ci95 == pytest.approx(t_quantile(1) * np.std([0.3, 0.1], ddof=1) / math.sqrt(2))
