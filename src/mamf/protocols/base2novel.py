"""The base2novel protocol (CoCoOp): the classes, in label order, split in half: the first
ceil(N/2) are base, the rest novel. Training and support use K shots of the base classes only;
the test is two all-way tasks, base classes on their test images (with the base support) and
novel classes on theirs (no support: nothing of a novel class is ever seen). Rows carry both
accuracies and their harmonic mean. The dev split, as CoCoOp's validation set, holds the base
classes only: tuning never sees a novel class either."""

from __future__ import annotations

import math

import numpy as np

from mamf.protocols.base import RowFields, register
from mamf.protocols.coop import Coop
from mamf.system.errors import MamfError


def base_novel(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Base classes: the first ceil(N/2) in label order; novel: the rest."""
    if n_classes < 2:
        raise MamfError("the base2novel protocol needs at least 2 classes")
    half = math.ceil(n_classes / 2)
    return np.arange(half), np.arange(half, n_classes)


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


@register
class Base2Novel(Coop):
    name = "base2novel"
    pools_tasks = False  # two tasks (base, novel), summarised by their harmonic mean
    shots_table = False  # its own table instead (`row_fields`)
    row_fields = RowFields((("base_acc", "base"), ("novel_acc", "novel"), ("hm", "HM")),
                           "base, novel and harmonic mean",
                           "Accuracy (%) on the base classes' and the novel classes' test images "
                           "and their harmonic mean (HM), mean ± std over seeds.")

    def train_classes(self, dataset):
        return base_novel(dataset.n_classes)[0]

    def parts(self, dataset):
        base, novel = base_novel(dataset.n_classes)
        return [(base, True), (novel, False)]

    def test_tasks(self, dataset, config, split, ways):
        """Base, then novel on the test split; the base task alone on dev (CoCoOp subsamples
        its validation set to the base classes)."""
        tasks = super().test_tasks(dataset, config, split, ways)
        return tasks if split == "test" else tasks[:1]

    def aggregate(self, accs):
        """The tasks are base, then novel: the row's number is their harmonic mean (a dev row
        has the base task alone: its number is the base accuracy)."""
        if len(accs) == 1:
            return accs[0], 0.0, {"base_acc": accs[0]}
        hm = harmonic_mean(*accs)
        return hm, 0.0, {"base_acc": accs[0], "novel_acc": accs[1], "hm": hm}
