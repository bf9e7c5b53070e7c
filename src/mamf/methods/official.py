"""What the baselines' official code does around each method's arithmetic: how it batches the
support set, how its learning rate moves, and the grids it searches (docs/method.md,
"Official hyper-parameters"). Written once here so that each method file reads as its rule.
"""

from __future__ import annotations

import math

import numpy as np

BATCH = 256  # the official codes' training batch (CLAP, TaskRes, Tip-Adapter-F)
WARMUP_LR = 1e-5  # Dassl's constant warm-up rate (the configs' WARMUP_CONS_LR), for one epoch


def shuffled_batches(rng: np.random.Generator, count: int, size: int = BATCH,
                     drop_last: bool = False) -> list[np.ndarray]:
    """One epoch of a shuffling loader over `count` items: a fresh permutation cut into batches
    of `size`. `drop_last`: Dassl's training loader, which drops the last incomplete batch when
    the set holds at least one whole batch (a smaller set is one batch)."""
    order = rng.permutation(count)
    if drop_last and count >= size:
        order = order[: count // size * size]
    return [order[i : i + size] for i in range(0, len(order), size)]


def dassl_rate(base: float, epoch: int, epochs: int, warmup_lr: float = WARMUP_LR) -> float:
    """The rate of `epoch` (0-based) under Dassl's cosine schedule with one constant warm-up
    epoch, as the CLAP and TaskRes configs set it (WARMUP_EPOCH 1, WARMUP_RECOUNT true): epoch 0
    at `warmup_lr`, epoch 1 at `base`, epoch e >= 1 at base * (1 + cos(pi (e - 1) / epochs)) / 2
    (the cosine restarts its count after the warm-up, stepped once an epoch)."""
    if epoch == 0:
        return warmup_lr
    return base * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


def search_grid(top: float, steps: int, start: float = 0.1) -> list[float]:
    """Tip-Adapter's and APE's search grid (their `search_scale`, `search_step`): `steps` values
    i * (top - start) / steps + start, i = 0..steps-1 (APE's gamma grid starts at 0)."""
    return [i * (top - start) / steps + start for i in range(int(steps))]
