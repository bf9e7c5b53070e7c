"""Task samplers: which n classes a training task gets (docs/method.md, "Task samplers").

Every method that trains on tasks (MAMF's steps, FOMAML's tasks) asks the sampler named by
`train.sampler` for the classes of each task; the images of the task are then drawn as before. A
sampler is deterministic given the run's generator, costs the same compute as uniform (same steps,
same batch size: it only changes which classes meet), and keeps whatever it learns in
`state_dict`, which goes into every checkpoint.

A sampler is one class with `@register`; nothing outside this module branches on a sampler's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from mamf.errors import MamfError
from mamf.tasks import sample_classes

if TYPE_CHECKING:
    from mamf.config import Config
    from mamf.data.dataset import Pool

REGISTRY: dict[str, type[TaskSampler]] = {}


def register(cls: type[TaskSampler]) -> type[TaskSampler]:
    if cls.name in REGISTRY:
        raise ValueError(f"sampler {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def create(name: str, pool: Pool, config: Config, class_embeddings=None,
           total_steps: int | None = None) -> TaskSampler:
    """`class_embeddings`: a callable giving the pool classes' prompt embeddings [C, D] (from
    the model as training starts), for samplers that need them; called at most once."""
    if name not in REGISTRY:
        raise MamfError(f"unknown task sampler {name!r}: use {', '.join(REGISTRY)}")
    return REGISTRY[name](pool, config, class_embeddings, total_steps)


class TaskSampler:
    """Draws the classes of one n-way training task, as sorted positions in `pool.classes`."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, pool: Pool, config: Config, class_embeddings=None,
                 total_steps: int | None = None):
        self.pool_size = len(pool.classes)
        self.config = config
        self.total_steps = total_steps
        self.drawn = 0  # tasks drawn so far (curricula read it)

    def draw(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        chosen = self.choose(rng, ways)
        self.drawn += 1
        return chosen

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        raise NotImplementedError

    def observe(self, chosen: np.ndarray, logits, labels) -> None:
        """Called after each training step on a task with its logits [B, n] and labels [B]."""

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state.get("drawn", 0))


@register
class Uniform(TaskSampler):
    name = "uniform"
    summary = "n classes uniformly at random without replacement (the paper's sampler)"

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        return sample_classes(rng, self.pool_size, ways)
