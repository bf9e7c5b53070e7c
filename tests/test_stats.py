"""The 95 % CI and the paired difference, by hand on small numbers."""

from __future__ import annotations

import math

import pytest

from mamf.metatest import summarize
from mamf.stats import ci95, mean_ci95, paired_difference, verdict


def test_ci95_is_1_96_sample_std_over_root_t():
    values = [0.2, 0.4, 0.6, 0.8]
    sample_std = math.sqrt(sum((v - 0.5) ** 2 for v in values) / 3)
    assert ci95(values) == pytest.approx(1.96 * sample_std / 2)
    assert mean_ci95(values) == pytest.approx((0.5, 1.96 * sample_std / 2))
    assert ci95([0.7]) == 0.0 and mean_ci95([0.7]) == (0.7, 0.0)
    mean, ci = mean_ci95([])
    assert math.isnan(mean) and math.isnan(ci)


def test_the_meta_test_summary_gives_the_same_numbers_bit_for_bit():
    accs = [0.5, 0.25, 1.0, 0.75, 0.4166666666666667, 0.3333333333333333]
    assert mean_ci95(accs) == summarize(accs)


def test_paired_difference_and_its_verdict():
    d = paired_difference([0.9, 0.8, 0.7], [0.5, 0.5, 0.5])
    assert d.pairs == 3 and d.mean == pytest.approx(0.3)
    assert d.ci95 == pytest.approx(ci95([0.4, 0.3, 0.2]))
    assert d.verdict == "holds"
    assert paired_difference([0.1, 0.2], [0.5, 0.5]).verdict == "does not hold"
    assert paired_difference([0.5, 0.6], [0.6, 0.5]).verdict == "inconclusive"
    one = paired_difference([1.0], [0.0])  # one pair shows nothing, however large
    assert one.ci95 == math.inf and one.verdict == "inconclusive"
    assert verdict(0.1, 0.1) == "inconclusive"  # a CI touching 0 does not exclude it
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.3])
