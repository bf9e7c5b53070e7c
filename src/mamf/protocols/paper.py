"""The protocol named `paper` (the MAMF paper's own, as opposed to "the paper's methods" or
claims elsewhere): each class's images split 60/20/20 in file-name order into
train/dev/test; a test task is n uniform classes, each class's split images halved into support
then query; K(n, N) tasks per task size (`mamf.tasks.task.number_of_tasks`)."""

from __future__ import annotations

import numpy as np

from mamf.data.dataset import ImageDataset, Pool
from mamf.data.splits import halves, least_images_per_class, per_class_split
from mamf.protocols.base import Protocol, register
from mamf.system.errors import MamfError
from mamf.tasks.task import number_of_tasks


def paper_pool(dataset: ImageDataset, split: str) -> Pool:
    """Every class, with its `split` share of its images (refused when a class is too small)."""
    need = least_images_per_class()
    short = [(c, len(x)) for c, x in zip(dataset.classes, dataset.class_images) if len(x) < need]
    if short:
        label, n = short[0]
        raise MamfError(f"label {label!r} has {n} image(s); the paper protocol needs at "
                        f"least {need} per class (60/20/20 split, support and query in "
                        f"dev and test)" + (f"; {len(short)} labels are short"
                                            if len(short) > 1 else ""))
    images = tuple(x[per_class_split(len(x))[split]] for x in dataset.class_images)
    return Pool(np.arange(dataset.n_classes), images)


@register
class Paper(Protocol):
    name = "paper"
    sets_shots = False  # shots and queries follow from the images per class
    fixed_test_images = True

    def pool(self, dataset, data, split, seed):
        return paper_pool(dataset, split)

    def test_tasks(self, dataset, config, split, ways):
        pool, rng = self.drawn_pool(dataset, config, split, ways)
        count = number_of_tasks(ways, dataset.n_classes)
        return [self.task(rng, pool, config.data, ways) for _ in range(count)]

    def test_task_count(self, data, ways, n_classes):
        # K(n, N); a size the dataset cannot hold fails as its row runs, and weighs one task
        return float(number_of_tasks(ways, n_classes)) if ways <= n_classes else 1.0

    def shots_queries(self, dataset, data, split):
        """The smallest support and query halves of any class (the row reports the minimum)."""
        sizes = [halves(x[per_class_split(len(x))[split]]) for x in dataset.class_images]
        return min(len(s) for s, _ in sizes), min(len(q) for _, q in sizes)
