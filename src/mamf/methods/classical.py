"""Classical fine-tuning: ordinary shuffled minibatches over the whole training pool, all N classes."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from mamf.data.dataset import Pool
from mamf.finetune import Batch, epoch_batches


def steps_per_epoch(pool: Pool, batch_size: int) -> int:
    return math.ceil(sum(len(x) for x in pool.images) / batch_size)


def batches(rng: np.random.Generator, pool: Pool, batch_size: int, steps: int) -> Iterator[Batch]:
    """`steps` minibatches from epochs over the pool; the loss ranges over every pool class."""
    images, labels = pool.all_images()
    stream = epoch_batches(rng, images, labels, pool.classes, batch_size, epochs=10**9)
    for _ in range(steps):
        yield next(stream)
