"""The Protocol interface and the registry every protocol joins (docs/method.md, "Protocols").

A protocol is one class in one file under `mamf/protocols/`, registered with `@register`. It says
how a dataset becomes what training and the meta-test draw from:

1. `pool`: the classes and images each split (train, dev, test) offers;
2. `task`: the shape of a training task drawn from a pool (the classes chosen by a task sampler);
3. `test_tasks`: the tasks of one (dataset, split, ways, seed), identical for every method;
4. `shots_queries`: the task sizes a results row records;
5. `aggregate`: a row's number from its per-task accuracies, and any fields of its own, which
   it declares (`row_fields`) so that the report shows them without knowing the protocol.

Nothing outside this package compares a protocol's name: it asks the class (`all_way`,
`sets_shots`, `pools_tasks`, `fixed_test_images`, `shots_table`, `row_fields`). A protocol's own
settings are declared on its class (`settings`, `mamf.catalogue.Setting`), as a method's are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mamf import catalogue
from mamf.catalogue import Setting, gather
from mamf.stats import mean_ci95
from mamf.system.errors import MamfError
from mamf.tasks.task import check_ways, halved_task

if TYPE_CHECKING:
    from mamf.catalogue import Config, DataConfig
    from mamf.data.dataset import ImageDataset, Pool
    from mamf.tasks.task import Task

REGISTRY: dict[str, type[Protocol]] = {}
SPLIT_STREAM = {"train": 100, "dev": 101, "test": 102}  # the seeded stream of each split's tasks


def register(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make a protocol reachable by its `name` (configs, the CLI, grids)."""
    if cls.name in REGISTRY:
        raise ValueError(f"protocol {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """Registered protocol names, in registration order."""
    return tuple(REGISTRY)


def settings() -> list[Setting]:
    """The registered protocols' settings, in registration order, each key once."""
    return gather(cls.settings for cls in REGISTRY.values())



def name_mask(dataset: ImageDataset, part: str) -> np.ndarray:
    """Per image: whether its file name holds `part` (the `data.*_match` filters)."""
    return np.array([part in n for n in dataset.file_names])


@dataclass(frozen=True)
class RowFields:
    """The fields a protocol's `aggregate` adds to every row, and how the report shows them: a
    table of `title` under the protocol's name, one column per field (mean ± std over seeds),
    `note` saying what the numbers are."""

    fields: tuple[tuple[str, str], ...]  # (the row's field, its column's title), in order
    title: str
    note: str


def get(name: str) -> Protocol:
    """The registered protocol `name`, as an instance (one `MamfError` line for an unknown one).

    Example:
        >>> get("episodic").sets_shots
        True
    """
    if name not in REGISTRY:
        raise MamfError(f"unknown protocol {name!r}: use {', '.join(names())}")
    return REGISTRY[name]()


class Protocol:
    """How a dataset becomes the tasks training draws from and the test tasks every method is
    scored on. A subclass sets `name`, overrides `pool`, `test_tasks` and `shots_queries` (the
    required three), and `task`, `task_images`, `test_task_count` or `aggregate` where its
    shape differs from the `paper` protocol's; its class attributes say what the rest of mamf
    asks of it.

    Attributes:
        name: the name configs, grids and rows use (`data.protocol`).
        all_way: every task classifies all N classes, so its only task size is N.
        sets_shots: `data.shots` is a setting of it (a grid may have a shots axis).
        trains_on_shots: the training pool is `data.shots` images per class.
        pools_tasks: its rows' task accuracies pool into the accuracy table and the
            comparisons (base2novel's two tasks do not: its number is their harmonic mean).
        fixed_test_images: every test task re-scores one fixed test split (the report says
            what its intervals then cover).
        shots_table: the report shows its rows against training shots.
        row_fields: the fields `aggregate` adds to a row, and how the report tables them.
        settings: its own settings (`mamf.catalogue.Setting`), joined to the config.

    Example:
        The `paper` protocol's pool, with one test task per size instead of K(n, N)::

            from mamf.protocols import Protocol, register
            from mamf.protocols.paper import Paper, paper_pool

            @register
            class OneTask(Protocol):
                name = "one-task"
                sets_shots = False  # shots follow from the images per class

                def pool(self, dataset, data, split, seed):
                    return paper_pool(dataset, split)

                def test_tasks(self, dataset, config, split, ways):
                    pool, rng = self.drawn_pool(dataset, config, split, ways)
                    return [self.task(rng, pool, config.data, ways)]

                def shots_queries(self, dataset, data, split):
                    return Paper().shots_queries(dataset, data, split)

            make_config({"data": {"protocol": "one-task", "root": "data/emoji"}})
    """

    name: ClassVar[str]
    all_way: ClassVar[bool] = False  # every task classifies all N classes: its only size is N
    sets_shots: ClassVar[bool] = True  # `data.shots` is a setting (a grid may have a shots axis)
    # the training pool is `data.shots` images per class (so `train.steps_per_shot` means
    # something: CLIP-LoRA's budget of k x K steps)
    trains_on_shots: ClassVar[bool] = False
    pools_tasks: ClassVar[bool] = True  # its rows' task accuracies pool into the method tables
    fixed_test_images: ClassVar[bool] = False  # every test task re-scores one fixed test split
    shots_table: ClassVar[bool] = False  # the report shows its rows against training shots
    row_fields: ClassVar[RowFields | None] = None  # the fields `aggregate` adds to a row
    settings: ClassVar[tuple[Setting, ...]] = ()  # this protocol's own settings

    def pool(self, dataset: ImageDataset, data: DataConfig, split: str, seed: int) -> Pool:
        """What `split` offers: its classes and, for each, its images (required).

        Args:
            dataset: the image folder, read.
            data: the config's data section.
            split: "train", "dev" or "test".
            seed: the run's seed, for protocols that draw the pool (coop's K shots).

        Returns:
            The split's Pool (global class ids, each class's image indices).
        """
        raise NotImplementedError

    def task(self, rng: np.random.Generator, pool: Pool, data: DataConfig, ways: int,
             chosen: np.ndarray | None = None, class_names=None,
             support_ok: np.ndarray | None = None, query_ok: np.ndarray | None = None) -> Task:
        """A task of `ways` classes of `pool`, drawn from `rng`. Default: each class's split
        images halved into support then query (the `paper` protocol's shape).

        Args:
            rng: the seeded stream the task is drawn from.
            pool: what the split offers (`pool`).
            data: the config's data section (shots, queries).
            ways: the task size n.
            chosen: the classes' positions in the pool (a task sampler's choice); None: uniform.
            class_names: the dataset's class names, for errors.
            support_ok, query_ok: per image, whether it may be a support (query) image.

        Returns:
            The Task: its classes, support and query images and their labels 0..n-1.
        """
        return halved_task(rng, pool, ways, chosen)

    def task_images(self, data: DataConfig, pool: Pool, ways: int) -> float:
        """Images one training task of `ways` classes holds, on average (how many tasks fill
        an epoch); default: the pool's images per class times `ways`."""
        return sum(len(x) for x in pool.images) * ways / len(pool.classes)

    def test_tasks(self, dataset: ImageDataset, config: Config, split: str,
                   ways: int) -> list[Task]:
        """The test tasks of one (dataset, split, ways, seed), identical for every method
        (required; `drawn_pool` gives the pool and its seeded stream).

        Args:
            dataset: the image folder, read.
            config: the run's config (its seed and data section).
            split: the split scored ("test", or "dev" when tuning).
            ways: the task size n.

        Returns:
            The tasks, in the order rows record their accuracies (`task_accs`).
        """
        raise NotImplementedError

    def test_task_count(self, data: DataConfig, ways: int, n_classes: int) -> float:
        """About how many test tasks a row of `ways` scores, without building them (the time
        left weighs rows by it); default one."""
        return 1.0

    def shots_queries(self, dataset: ImageDataset, data: DataConfig,
                      split: str) -> tuple[int, int]:
        """The support and query images per class a row of `split` records (required).

        Returns:
            (shots, queries), as the row's `shots` and `queries`.
        """
        raise NotImplementedError

    def aggregate(self, accs: list[float]) -> tuple[float, float, dict]:
        """A row's number from its per-task accuracies.

        Args:
            accs: each test task's accuracy, in `test_tasks` order.

        Returns:
            (mean, 95 % CI half-width, the row's own fields); the fields are those
            `row_fields` declares (none by default).

        Example:
            >>> get("base2novel").aggregate([0.8, 0.6])[0]  # the harmonic mean
            0.6857142857142857
        """
        mean, ci = mean_ci95(accs)
        return mean, ci, {}

    def drawn_pool(self, dataset: ImageDataset, config: Config, split: str,
                   ways: int) -> tuple[Pool, np.random.Generator]:
        """The split's pool and the seeded stream its test tasks are drawn from."""
        pool = self.pool(dataset, config.data, split, config.seed)
        rng = np.random.default_rng([config.seed, SPLIT_STREAM[split], ways])
        check_ways(len(pool.classes), ways, f"classes in the {split} split of {dataset.name}",
                   least=1)
        return pool, rng


catalogue.join("protocols", names=names, settings=settings, get=get)
