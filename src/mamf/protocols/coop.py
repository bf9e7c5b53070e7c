"""The coop protocol (CoOp, Tip-Adapter, CLIP-LoRA): all-way classification. Each class's images
go to train/dev/test, from a CoOp split file (`data.split_file`) when one is given, else
60/20/20 in file-name order as in the paper protocol (`mamf.data.coop_splits`). The seed draws K =
`data.shots` training images per class: they are the whole training set of a trained method and
the support set of the single test task, whose query set is every test image."""

from __future__ import annotations

import numpy as np

from mamf.data.coop_splits import image_split, training_shots
from mamf.data.dataset import ImageDataset, Pool, group_labels
from mamf.errors import MamfError
from mamf.protocols.base import Protocol, register
from mamf.tasks import Task


@register
class Coop(Protocol):
    name = "coop"
    trains_on_shots = True
    all_way = True
    fixed_test_images = True

    def train_classes(self, dataset: ImageDataset) -> np.ndarray:
        """The classes training and support see."""
        return np.arange(dataset.n_classes)

    def pool(self, dataset, data, split, seed):
        """The training split is the K-shot training set (of `train_classes`); the dev and test
        splits hold every image of every class."""
        if split == "train":
            classes = self.train_classes(dataset)
            shots = training_shots(dataset, data, seed)
            return Pool(classes, tuple(shots[c] for c in classes))
        images = image_split(dataset, split, data.split_file)
        empty = [dataset.classes[c] for c, x in enumerate(images) if len(x) == 0]
        if empty:
            raise MamfError(f"label {empty[0]!r} has no {split} image in the {data.protocol} "
                            "protocol's split")
        return Pool(np.arange(dataset.n_classes), tuple(images))

    def parts(self, dataset: ImageDataset) -> list[tuple[np.ndarray, bool]]:
        """The test tasks' classes, and whether each task has a support set."""
        return [(np.arange(dataset.n_classes), True)]

    def test_tasks(self, dataset, config, split, ways):
        """All-way, whatever `ways`: support the K shots, query every image of the split."""
        d = config.data
        shots = training_shots(dataset, d, config.seed)
        pool = self.pool(dataset, d, split, config.seed)

        def task(classes: np.ndarray, with_support: bool) -> Task:
            support = [shots[c] if with_support else np.zeros(0, np.int64) for c in classes]
            query = [pool.images[c] for c in classes]
            return Task(classes, np.concatenate(support), group_labels(support),
                        np.concatenate(query), group_labels(query))

        return [task(classes, with_support) for classes, with_support in self.parts(dataset)]

    def shots_queries(self, dataset, data, split):
        """K shots; every image of the split is a query."""
        return data.shots, sum(len(x) for x in image_split(dataset, split, data.split_file))
