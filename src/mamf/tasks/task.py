"""Few-shot tasks and the uniform task sampler, shared by every method and the meta-test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mamf.data.dataset import Pool, group_labels
from mamf.data.splits import halves
from mamf.system.errors import MamfError


@dataclass(frozen=True)
class Task:
    """n classes (global ids); support and query image indices with labels in 0..n-1."""

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray

    @property
    def ways(self) -> int:
        return len(self.classes)


def number_of_tasks(n: int, N: int, miss_probability: float = 0.001) -> int:
    """K(n, N): enough uniform n-subsets that a class is missed by all with probability <= 0.001."""
    if not 1 <= n <= N:
        raise MamfError(f"task size {n} must be between 1 and the number of classes {N}")
    if n == N:
        return 1
    return int(np.rint(math.log(miss_probability) / math.log(1 - n / N)))


def check_ways(pool_size: int, ways: int, of: str = "classes available", least: int = 2) -> None:
    """A task needs at least `least` classes and at most the pool's; one line naming what the
    pool holds (`of`) otherwise."""
    if ways > pool_size:
        raise MamfError(f"ways={ways} is more than the {pool_size} {of}")
    if ways < least:
        raise MamfError(f"ways must be at least {least}, got {ways}")


def sample_classes(rng: np.random.Generator, pool_size: int, ways: int) -> np.ndarray:
    """Positions of `ways` classes drawn uniformly without replacement, in sorted order."""
    check_ways(pool_size, ways)
    return np.sort(rng.choice(pool_size, size=ways, replace=False))


def halved_task(rng: np.random.Generator, pool: Pool, ways: int,
                chosen: np.ndarray | None = None) -> Task:
    """Uniform classes (or `chosen` positions in the pool); each class's split images halved into
    support then query (the `paper` protocol's tasks)."""
    if chosen is None:
        chosen = sample_classes(rng, len(pool.classes), ways)
    support, query = zip(*(halves(pool.images[c]) for c in chosen))
    return Task(pool.classes[chosen], np.concatenate(support), group_labels(list(support)),
                np.concatenate(query), group_labels(list(query)))


def episodic_task(rng: np.random.Generator, pool: Pool, ways: int, shots: int, queries: int,
                  class_names=None, support_ok: np.ndarray | None = None,
                  query_ok: np.ndarray | None = None, chosen: np.ndarray | None = None) -> Task:
    """N-way K-shot Q-query: uniform classes (or `chosen` positions in the pool), then K+Q
    distinct images per class at random.

    `support_ok`/`query_ok` (bool per image) restrict where support and query come from, e.g.
    one image style for support and another for query.
    """
    if chosen is None:
        chosen = sample_classes(rng, len(pool.classes), ways)
    support, query = [], []
    for c in chosen:
        imgs = pool.images[c]
        if support_ok is None:
            if len(imgs) < shots + queries:
                _too_few(class_names, pool.classes[c], len(imgs), shots + queries)
            pick = rng.permutation(imgs)[: shots + queries]
            support.append(pick[:shots])
            query.append(pick[shots:])
        else:
            s_imgs, q_imgs = imgs[support_ok[imgs]], imgs[query_ok[imgs]]
            if len(s_imgs) < shots or len(q_imgs) < queries:
                _too_few(class_names, pool.classes[c], min(len(s_imgs), len(q_imgs)),
                         max(shots, queries))
            support.append(rng.permutation(s_imgs)[:shots])
            query.append(rng.permutation(q_imgs)[:queries])
    return Task(pool.classes[chosen], np.concatenate(support), group_labels(support),
                np.concatenate(query), group_labels(query))


def _too_few(class_names, class_id, have: int, need: int) -> None:
    label = class_names[class_id] if class_names is not None else class_id
    raise MamfError(f"label {label!r} has {have} usable image(s); the task needs {need} "
                    "(shots + queries): lower --shots/--queries or drop the label")


def check_pool(pool: Pool, ways: int, need: int, class_names=None) -> None:
    """Refuse up front, naming the label, when a pool cannot supply every possible task."""
    check_ways(len(pool.classes), ways, "classes in this split", least=1)
    for c, imgs in zip(pool.classes, pool.images):
        if len(imgs) < need:
            _too_few(class_names, c, len(imgs), need)
