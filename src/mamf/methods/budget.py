"""Training budgets (docs/method.md, "Budgets"): how many optimiser updates a method takes and how
many images each update back-propagates.

`train.budget: native` runs each method's own schedule (as every run before budgets existed).
`matched` gives every method classical fine-tuning's schedule: its number of updates, and at
update i as many images as classical's minibatch i holds (the batch size, less at the end of an
epoch). Classical fine-tuning defines the budget, so its runs are the same under both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mamf.catalogue import TrainConfig
    from mamf.data.dataset import Pool

BUDGETS = ("matched", "native")


def pool_images(pool: Pool) -> int:
    return sum(len(x) for x in pool.images)


def steps_per_epoch(pool: Pool, batch_size: int) -> int:
    return math.ceil(pool_images(pool) / batch_size)


def classical_steps(pool: Pool, train: TrainConfig) -> int:
    """Classical fine-tuning's updates: `train.steps`, else `train.epochs` passes over the pool."""
    return train.steps or math.ceil(train.epochs * steps_per_epoch(pool, train.batch_size))


class Budget:
    """Classical fine-tuning's schedule over a pool: `steps` updates; `size(i)` images at update i
    (shuffled passes of `batch_size`, each pass's last batch holding what is left)."""

    def __init__(self, pool: Pool, train: TrainConfig):
        self.images = pool_images(pool)
        self.batch_size = train.batch_size
        self.per_epoch = steps_per_epoch(pool, train.batch_size)
        self.steps = classical_steps(pool, train)

    def size(self, i: int) -> int:
        j = i % self.per_epoch
        return min(self.batch_size, self.images - j * self.batch_size)

    def _over_run(self, f) -> int:
        """The sum of f(size(i)) over the run's updates, in closed form (a run may take 10^12
        updates): whole passes, then the first `rest` updates of one, which all hold a full
        batch (only a pass's last update holds less, and `rest` stops before it)."""
        full, rest = divmod(self.steps, self.per_epoch)
        last = self.size(self.per_epoch - 1)
        per_pass = (self.per_epoch - 1) * f(self.batch_size) + f(last)
        return full * per_pass + rest * f(self.batch_size)

    def total(self) -> int:
        """Images over the whole run."""
        return self._over_run(lambda n: n)

    def draws(self, per_task: float) -> int:
        """Tasks a method draws in all when it fills each update with tasks of `per_task` images
        (exact when every task holds that many; the curriculum sampler reads it)."""
        per_task = max(1.0, per_task)
        return self._over_run(lambda n: math.ceil(n / per_task))


def matched(train: TrainConfig) -> bool:
    return train.budget == "matched"
