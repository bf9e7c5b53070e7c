"""The two statistics every number in mamf is reported with, written once.

- mean and 95 % confidence half-width over test tasks: 1.96 * sample std / sqrt(T), the normal
  approximation the paper uses (0 for a single task, since one value has no spread to measure);
- the paired difference of two methods over the same test tasks, with the same CI and a plain
  verdict: its CI lies above 0, below 0, or straddles it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.96  # two-sided 95 % quantile of the standard normal

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95 % CI of the mean: 1.96 * sample std / sqrt(T); 0 for one value."""
    a = np.asarray(values, dtype=np.float64)
    return float(Z95 * a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95 % CI half-width; (nan, nan) for no values."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    return float(a.mean()), ci95(a)


def verdict(mean: float, ci: float) -> str:
    """`holds` when the CI lies above 0, `does not hold` when below, else `inconclusive`."""
    if mean - ci > 0:
        return HOLDS
    if mean + ci < 0:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


@dataclass(frozen=True)
class PairedDifference:
    """Mean of a - b over paired tasks, its 95 % CI, the number of pairs and the verdict."""

    mean: float
    ci95: float
    pairs: int
    verdict: str


def paired_difference(a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    """a - b task by task. One pair proves nothing, so its CI is infinite (inconclusive)."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired_difference needs two equally long non-empty sequences, "
                         f"got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(d.mean())
    ci = ci95(d) if len(d) > 1 else math.inf
    return PairedDifference(mean, ci, len(d), verdict(mean, ci))
