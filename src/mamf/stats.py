"""Statistics of per-task accuracies, written once: the mean and its 95 % confidence interval."""

from __future__ import annotations

import math

import numpy as np


def mean_ci(values) -> tuple[float, float]:
    """Mean and 95 % CI half-width, 1.96 * sample std / sqrt(T); the CI is 0 for one value and
    both are NaN for none."""
    a = np.asarray(values, dtype=np.float64)
    if len(a) == 0:
        return float("nan"), float("nan")
    ci = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0
    return float(a.mean()), float(ci)
