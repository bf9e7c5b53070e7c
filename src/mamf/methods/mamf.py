"""MAMF: classical fine-tuning whose data arrives as uniformly sampled n-way tasks.

`sampled` (default): every step draws n classes uniformly and a minibatch of their training images,
so the compute equals classical fine-tuning's. `sequential` reproduces the official code: K(n, N)
tasks trained one after another, `epochs` passes each, with a fresh optimiser per task.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mamf.data.dataset import Pool, group_labels
from mamf.finetune import Batch, epoch_batches
from mamf.tasks import number_of_tasks, sample_classes


def task_images(pool: Pool, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    groups = [pool.images[c] for c in chosen]
    return np.concatenate(groups), group_labels(groups)


def sampled_batches(rng: np.random.Generator, pool: Pool, ways: int, batch_size: int,
                    steps: int) -> Iterator[Batch]:
    """Each step: a uniform n-subset of classes, then up to `batch_size` of their images."""
    for _ in range(steps):
        chosen = sample_classes(rng, len(pool.classes), ways)
        images, labels = task_images(pool, chosen)
        pick = rng.choice(len(images), size=min(batch_size, len(images)), replace=False)
        yield Batch(images[pick], labels[pick], pool.classes[chosen])


def sequential_batches(rng: np.random.Generator, pool: Pool, ways: int, batch_size: int,
                       epochs: int) -> Iterator[Batch]:
    """The official schedule: K(n, N) tasks in turn, `epochs` passes each; `new_task` marks a task."""
    for _ in range(number_of_tasks(ways, len(pool.classes))):
        chosen = sample_classes(rng, len(pool.classes), ways)
        images, labels = task_images(pool, chosen)
        for i, b in enumerate(epoch_batches(rng, images, labels, pool.classes[chosen],
                                            batch_size, epochs)):
            yield Batch(b.images, b.labels, b.classes, new_task=(i == 0))
