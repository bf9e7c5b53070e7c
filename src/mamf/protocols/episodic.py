"""The episodic protocol: classes split 60/20/20 (`data.class_split`, drawn by `data.split_seed`)
into disjoint train/dev/test classes; a task is N-way K-shot Q-query (`data.ways`, `.shots`,
`.queries`), `data.tasks` test tasks per size. `data.support_match`/`.query_match` restrict
support and query images to file names holding them."""

from __future__ import annotations

from mamf.data.dataset import ImageDataset, Pool
from mamf.data.splits import class_split
from mamf.protocols.base import Protocol, name_mask, register
from mamf.system.errors import MamfError
from mamf.tasks.task import check_pool, episodic_task


def episodic_pool(dataset: ImageDataset, split: str, fractions=(0.6, 0.2, 0.2),
                  split_seed: int = 0) -> Pool:
    """The classes `split` holds, with all their images."""
    ids = class_split(dataset.n_classes, tuple(fractions), split_seed)[split]
    return Pool(ids, tuple(dataset.class_images[i] for i in ids))


@register
class Episodic(Protocol):
    name = "episodic"

    def pool(self, dataset, data, split, seed):
        return episodic_pool(dataset, split, data.class_split, data.split_seed)

    def task(self, rng, pool, data, ways, chosen=None, class_names=None, support_ok=None,
             query_ok=None):
        return episodic_task(rng, pool, ways, data.shots, data.queries, class_names, support_ok,
                             query_ok, chosen)

    def task_images(self, data, pool, ways):
        return ways * data.shots + ways * data.queries

    def test_tasks(self, dataset, config, split, ways):
        d = config.data
        pool, rng = self.drawn_pool(dataset, config, split, ways)
        support_ok = query_ok = None
        if d.support_match is not None:
            support_ok, query_ok = name_mask(dataset, d.support_match), \
                name_mask(dataset, d.query_match)
            for c, imgs in zip(pool.classes, pool.images):
                s, q = int(support_ok[imgs].sum()), int(query_ok[imgs].sum())
                if s < d.shots or q < d.queries:
                    raise MamfError(f"label {dataset.classes[c]!r} has {s} support image(s) "
                                    f"matching {d.support_match!r} and {q} query image(s) "
                                    f"matching {d.query_match!r}; the task needs {d.shots} and "
                                    f"{d.queries}")
        else:
            check_pool(pool, ways, d.shots + d.queries, dataset.classes)
        return [self.task(rng, pool, d, ways, None, dataset.classes, support_ok, query_ok)
                for _ in range(d.tasks)]

    def test_task_count(self, data, ways, n_classes):
        return float(data.tasks)

    def shots_queries(self, dataset, data, split):
        return data.shots, data.queries
