"""The two ways a dataset is split (docs/method.md, "Protocols").

`per_class_split` (the `paper` protocol's, and coop's without a split file): every split keeps
all classes; each class's images, in file-name order, go 60/20/20 to train/dev/test, and a
dev/test task uses the first half of a class's split images as support (`halves`).
`class_split` (the `episodic` protocol's): classes are split disjointly (seeded shuffle) into
train/dev/test.
"""

from __future__ import annotations

import numpy as np

from mamf.system.errors import MamfError

SPLITS = ("train", "dev", "test")


def per_class_split(n_images: int) -> dict[str, slice]:
    """One class's `n_images` (in file-name order) as train, dev and test slices: 60/20/20."""
    a, b = int(n_images * 0.6), int(n_images * 0.8)
    return {"train": slice(0, a), "dev": slice(a, b), "test": slice(b, n_images)}


def halves(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First half support, second half query (under `paper` the images per class set the shots)."""
    k = len(indices) // 2
    return indices[:k], indices[k:]


def least_images_per_class() -> int:
    """The fewest images a class needs under `per_class_split`: a non-empty train share, and
    1+1 support/query in dev and test."""
    n = 1
    while True:
        s = per_class_split(n)
        if s["train"].stop >= 1 and all(sl.stop - sl.start >= 2 for k, sl in s.items()
                                        if k != "train"):
            return n
        n += 1


def class_split(n_classes: int, fractions: tuple[float, float, float], seed: int) -> dict:
    """Disjoint class ids per split from a seeded shuffle; every split gets at least one class."""
    if n_classes < 3:
        raise MamfError(f"the episodic protocol needs at least 3 classes, the data has {n_classes}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions):
        raise MamfError(f"class_split must be three positive fractions, got {fractions}")
    total = sum(fractions)
    order = np.random.default_rng([seed, 7]).permutation(n_classes)
    n_train = max(1, round(n_classes * fractions[0] / total))
    n_dev = max(1, round(n_classes * fractions[1] / total))
    n_train = min(n_train, n_classes - n_dev - 1)
    parts = {"train": order[:n_train], "dev": order[n_train:n_train + n_dev],
             "test": order[n_train + n_dev:]}
    return {k: np.sort(v) for k, v in parts.items()}
