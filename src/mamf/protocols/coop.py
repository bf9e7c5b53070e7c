"""The coop protocol (CoOp, Tip-Adapter, CLIP-LoRA): all-way classification. Each class's images
go to train/dev/test, from a CoOp split file (`data.split_file`) when one is given, else
60/20/20 in file-name order as in the paper protocol (`mamf.data.coop_splits`). The seed draws K =
`data.shots` training images per class: they are the whole training set of a trained method and
the support set of the single test task, whose query set is every test image.

A folder of CoOp's DATASETS.md brings its split, and the seed draws its shots as CoOp does, dev
being CoOp's min(K, 4) validation shots per class (`mamf.data.coop_layouts`). A test-only
folder (an ImageNet variant) scores a run trained elsewhere: one task of all its classes, with no
support (as base2novel's novel classes)."""

from __future__ import annotations

import numpy as np

from mamf.data.coop_splits import drawn_split, split_size, training_shots
from mamf.data.dataset import ImageDataset, Pool, group_labels
from mamf.protocols.base import Protocol, register
from mamf.system.errors import MamfError
from mamf.tasks.task import Task


@register
class Coop(Protocol):
    name = "coop"
    trains_on_shots = True
    all_way = True
    fixed_test_images = True
    shots_table = True  # the field's form: accuracy against K, mean ± std over seeds

    def train_classes(self, dataset: ImageDataset) -> np.ndarray:
        """The classes training and support see."""
        return np.arange(dataset.n_classes)

    def pool(self, dataset, data, split, seed):
        """The training split is the K-shot training set (of `train_classes`); the test split
        holds every image of every class, and so does dev but of a CoOp folder (CoOp's
        min(K, 4) validation shots per class)."""
        if split != "test" and is_test_only(dataset):
            raise MamfError(f"{dataset.name} is a test-only dataset (CoOp's "
                            f"{dataset.coop.layout.name}): train on ImageNet, then score the run "
                            "on it with `mamf evaluate --run RUN --data FOLDER`")
        if split == "train":
            classes = self.train_classes(dataset)
            shots = training_shots(dataset, data, seed)
            return Pool(classes, tuple(shots[c] for c in classes))
        images = drawn_split(dataset, data, split, seed)
        empty = [dataset.classes[c] for c, x in enumerate(images) if len(x) == 0]
        if empty:
            raise MamfError(f"label {empty[0]!r} has no {split} image in the {data.protocol} "
                            "protocol's split")
        return Pool(np.arange(dataset.n_classes), tuple(images))

    def parts(self, dataset: ImageDataset) -> list[tuple[np.ndarray, bool]]:
        """The test tasks' classes, and whether each task has a support set."""
        return [(np.arange(dataset.n_classes), not is_test_only(dataset))]

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
        return data.shots, split_size(dataset, data, split)


def is_test_only(dataset: ImageDataset) -> bool:
    """Whether the dataset has only a test split (an ImageNet variant of CoOp's benchmark)."""
    return dataset.coop is not None and dataset.coop.layout.test_only
