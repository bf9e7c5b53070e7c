"""Task samplers: which n classes a training task gets (docs/method.md, "Task samplers").

Every method that trains on tasks (MAMF's steps, FOMAML's tasks) asks the sampler named by
`train.sampler` for the classes of each task; the images of the task are then drawn as before. A
sampler is deterministic given the run's generator, costs the same compute as uniform (same steps,
same batch size: it only changes which classes meet), and keeps whatever it learns in
`state_dict`, which goes into every checkpoint.

A vision-language model offers a measure of how alike two classes are for free: the cosine of
their prompt embeddings. `similar`, `diverse` and `curriculum` draw on it; `confusion` learns
which classes the model confuses from the training steps' own logits.

A sampler is one class with `@register`, its own settings declared on it (`settings`); nothing
outside this module branches on a sampler's name. `train.sampler` itself is declared here, its
default the one sampler that draws as the paper does (`mamf.tasks.DEFAULT_SAMPLER`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from mamf import catalogue
from mamf.catalogue import Setting, gather
from mamf.system.errors import MamfError
from mamf.tasks import DEFAULT_SAMPLER
from mamf.tasks.task import check_ways, sample_classes

if TYPE_CHECKING:
    from mamf.catalogue import Config
    from mamf.data.dataset import Pool
    from mamf.features.inputs import ModelInputs
    from mamf.models.base import DualEncoder

REGISTRY: dict[str, type[TaskSampler]] = {}


def register(cls: type[TaskSampler]) -> type[TaskSampler]:
    if cls.name in REGISTRY:
        raise ValueError(f"sampler {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


SAMPLER = Setting("train.sampler", str, DEFAULT_SAMPLER, "which classes a training task gets, for "
                  "methods that train on tasks", choices=names)


def settings() -> list[Setting]:
    """`train.sampler`, then the registered samplers' settings in registration order."""
    return gather([(SAMPLER,), *(cls.settings for cls in REGISTRY.values())])



def sampler_class(name: str) -> type[TaskSampler]:
    """The task sampler registered as `name`."""
    if name not in REGISTRY:
        raise MamfError(f"unknown task sampler {name!r}: use {', '.join(REGISTRY)}")
    return REGISTRY[name]


def create(name: str, pool: Pool, config: Config,
           class_embeddings: Callable[[], np.ndarray] | None = None) -> TaskSampler:
    """`class_embeddings`: a callable giving the pool classes' normalised prompt embeddings
    [C, D] from the model as training starts; samplers that need them call it once, at once
    (so a resumed run sees the same embeddings as the run it resumes)."""
    return sampler_class(name)(pool, config, class_embeddings)


# -- prompt similarity -------------------------------------------------------------------------
def prompt_embeddings(model: DualEncoder, inputs: ModelInputs, class_ids) -> np.ndarray:
    """The classes' prompt embeddings, normalised to unit length: [C, D] float32."""
    from mamf.features.inputs import autocast

    with torch.no_grad(), autocast(inputs.device, inputs.precision):
        emb = inputs.texts(model, np.asarray(class_ids)).float()
    return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy()


def task_similarity(embeddings: np.ndarray, classes) -> float:
    """Mean pairwise cosine similarity of a task's classes' prompts (`embeddings` rows are
    indexed by the classes' ids): how hard the task is by meaning."""
    e = embeddings[np.asarray(classes)].astype(np.float64)
    cos = e @ e.T
    n = len(e)
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


# -- drawing -----------------------------------------------------------------------------------
def pick(rng: np.random.Generator, weights: np.ndarray) -> int:
    """One index drawn with probability proportional to `weights` (one uniform number; an entry
    of weight 0 is never drawn)."""
    cdf = np.cumsum(weights)
    return int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))


def pick_softmax(rng: np.random.Generator, score: np.ndarray, exclude) -> int:
    """One index drawn with probability proportional to exp(score), never one of `exclude`
    (the largest allowed score gets weight 1: nothing overflows, the sum is at least 1)."""
    score = np.array(score, dtype=np.float64)
    score[exclude] = -np.inf
    return pick(rng, np.exp(score - score.max()))


def successive(rng: np.random.Generator, first: int, ways: int,
               score: Callable[[list[int]], np.ndarray]) -> np.ndarray:
    """Classes after `first` one at a time, without replacement: each with probability
    proportional to exp(score(chosen so far)). Sorted positions."""
    chosen = [first]
    for _ in range(ways - 1):
        chosen.append(pick_softmax(rng, score(chosen), chosen))
    return np.sort(np.asarray(chosen, dtype=np.int64))


class TaskSampler:
    """Draws the classes of one n-way training task, as sorted positions in `pool.classes`.

    The method that trains calls `set_total_draws` once with how many tasks it will draw, then
    `draw` for each task. A sampler that `learns` also gets `observe` after each training step on
    a task, with the step's softmax confusion among the task's classes (a `Confusion` from
    `recorder`).
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line for `mamf methods`
    learns: ClassVar[bool] = False  # observes each step's logits
    settings: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, pool: Pool, config: Config,
                 class_embeddings: Callable[[], np.ndarray] | None = None):
        self.pool_size = len(pool.classes)
        self.config = config
        self.total: int | None = None  # tasks to draw in the whole run (curricula read it)
        self.drawn = 0  # tasks drawn so far

    def set_total_draws(self, total_draws: int | None) -> None:
        """How many tasks the run will draw in all (None: not known in advance)."""
        self.total = total_draws

    def draw(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        check_ways(self.pool_size, ways)
        chosen = self.choose(rng, ways)
        self.drawn += 1
        return chosen

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        raise NotImplementedError

    def recorder(self, classes: np.ndarray) -> Confusion | None:
        """A `Confusion` to fill during a step on a task of `classes`, if this sampler learns."""
        return Confusion(classes) if self.learns else None

    def observe(self, chosen: np.ndarray, confusion: np.ndarray) -> None:
        """After a step on the task `chosen`: its confusion table (see `Confusion`)."""

    def state_dict(self) -> dict:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state.get("drawn", 0))


class Confusion:
    """Softmax confusion among a task's classes, summed over the images a step scored.

    `table[i, j]` (i, j < n) is the sum, over the images of the task's class i, of the softmax
    probability the model gives class j; `table[i, n]` counts those images. Called with each
    piece of logits as the loss is computed (under torchrun: each rank's share of the batch, or
    its tasks' query chunks), then `sum_over_ranks` makes every rank's table the whole step's.
    """

    def __init__(self, classes: np.ndarray):
        self.position = {int(c): k for k, c in enumerate(classes)}
        self.table = torch.zeros(len(classes), len(classes) + 1)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, classes: np.ndarray) -> None:
        """`logits` [B, C] over the global class ids `classes` (the task's, or the subset a
        `candidates=batch` loss ranges over); `labels` [B] index `classes`."""
        columns = torch.as_tensor([self.position[int(c)] for c in classes])
        probs = logits.detach().float().softmax(1).cpu()
        rows = torch.zeros(len(probs), self.table.shape[1])
        rows[:, columns] = probs
        rows[:, -1] = 1.0
        self.table.index_add_(0, columns[labels.cpu()], rows)

    def values(self) -> np.ndarray:
        return self.table.numpy().astype(np.float64)


def sum_over_ranks(confusions: list[Confusion]) -> None:
    """Under torchrun: every rank's tables become the sums over the ranks (one all-reduce), so
    every rank's sampler learns the same."""
    from mamf.parallel import distributed

    distributed.sum_tensors([c.table for c in confusions])


# -- the samplers ------------------------------------------------------------------------------
@register
class Uniform(TaskSampler):
    """The paper's sampler: n classes uniformly at random without replacement (docs/method.md,
    "Task samplers"); it draws exactly as `mamf.tasks.task.sample_classes` always has."""

    name = DEFAULT_SAMPLER
    description = "n classes uniformly at random without replacement (the paper's sampler)"

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        return sample_classes(rng, self.pool_size, ways)


class ByMeaning(TaskSampler):
    """A sampler that reads the pool classes' prompt similarities: `cos[a, b]` is the cosine of
    the prompt embeddings of pool classes a and b, from the model as training starts."""

    settings = (Setting("train.sampler_tau", float, 0.1, "similar, diverse, curriculum: the "
                        "temperature on prompt cosine similarities (smaller: sharper)",
                        minimum=0, above=True),)

    def __init__(self, pool, config, class_embeddings=None):
        super().__init__(pool, config, class_embeddings)
        if class_embeddings is None:
            raise MamfError(f"task sampler {self.name!r} needs the classes' prompt embeddings")
        e = np.asarray(class_embeddings(), dtype=np.float64)
        self.cos = e @ e.T
        self.tau = config.train.sampler_tau

    def toward_anchor(self, chosen: list[int], strength: float) -> np.ndarray:
        """Scores strength * cos(c, anchor) / tau: the anchor is the first class chosen."""
        return strength * self.cos[chosen[0]] / self.tau

    def away_from_chosen(self, chosen: list[int], strength: float) -> np.ndarray:
        """Scores -strength * max over the chosen s of cos(c, s) / tau."""
        return -strength * self.cos[chosen].max(0) / self.tau


@register
class Similar(ByMeaning):
    """Hard tasks by meaning: classes whose prompts resemble each other must be told apart.

    An anchor class uniformly, then the other n-1 one at a time without replacement, each with
    probability proportional to exp(cos(prompt of c, prompt of the anchor) / tau)
    (`train.sampler_tau`; tau -> infinity is uniform, tau -> 0 the anchor's nearest classes).
    docs/method.md, "Task samplers".
    """

    name = "similar"
    description = "hard tasks: classes whose prompts are close to a uniform anchor's (sampler_tau)"

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        anchor = int(rng.integers(self.pool_size))
        return successive(rng, anchor, ways, lambda chosen: self.toward_anchor(chosen, 1.0))


@register
class Diverse(ByMeaning):
    """Easy, spread-out tasks: classes whose prompts are mutually dissimilar.

    A soft farthest-point draw: an anchor class uniformly, then each next class without
    replacement with probability proportional to exp(-max over the chosen classes s of
    cos(c, s) / tau) (`train.sampler_tau`; tau -> 0 is farthest-point sampling).
    docs/method.md, "Task samplers".
    """

    name = "diverse"
    description = "easy tasks: mutually dissimilar prompts, a soft farthest-point draw (sampler_tau)"

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        anchor = int(rng.integers(self.pool_size))
        return successive(rng, anchor, ways, lambda chosen: self.away_from_chosen(chosen, 1.0))


@register
class Curriculum(ByMeaning):
    """From easy (dissimilar) to hard (similar) tasks over training.

    Task k of K (k = 0..K-1, K from `set_total_draws`) has the progress p = k / K and the strength
    s = 2p - 1, from -1 to nearly +1. While s < 0 the draw is `diverse`'s with temperature
    tau / |s|, from s >= 0 on it is `similar`'s with temperature tau / s; at s = 0 both are
    uniform. The anchor is always uniform. docs/method.md, "Task samplers".
    """

    name = "curriculum"
    description = "diverse tasks first, similar ones last, linearly in the tasks drawn (sampler_tau)"

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        if not self.total:
            raise MamfError("the curriculum sampler needs the number of tasks the run draws")
        strength = 2.0 * self.drawn / self.total - 1.0
        anchor = int(rng.integers(self.pool_size))
        if strength < 0:
            return successive(rng, anchor, ways,
                              lambda chosen: self.away_from_chosen(chosen, -strength))
        return successive(rng, anchor, ways, lambda chosen: self.toward_anchor(chosen, strength))


@register
class AdaptiveConfusion(TaskSampler):
    """Adaptive class-pair sampling (Liu et al., "Adaptive Task Sampling for Meta-Learning",
    ECCV 2020): tasks of the classes the model currently confuses.

    Every pair of pool classes (a, b) has a potential C(a, b) = C(b, a) > 0, 1 at first; it is
    kept as its logarithm L = log C (0 at first). After each training step on a task:

        v(a, b) = (sum over the step's images x of class a of p(b | x)
                   + sum over its images x of class b of p(a | x)) / (their number)
        C(a, b) <- C(a, b)^discount * exp(scale * v(a, b)),  i.e.  L <- discount * L + scale * v

    for every pair of the task's classes that both have images in the step, where p is the
    softmax over the loss's candidate classes (the training loss's own logits: the task's n
    classes, or those in the minibatch under `candidates=batch`; FOMAML: the query logits after
    adaptation). `discount` is `train.sampler_discount` (Liu et al.'s tau: how fast old
    confusion is forgotten), `scale` is `train.sampler_scale` (Liu et al.'s alpha). Pairs not in
    the task keep their potential. With as many images of each class, v is the mean of the two
    directions' mean confusion, as in the authors' released code.

    A task is drawn greedily: its first two classes as a pair (a, b) with probability
    proportional to C(a, b) (a by the sum of its row of C, then b by C(a, b)), then each next
    class c with probability proportional to the product of C(c, s) over the chosen classes s
    (in logarithms: no overflow, however long the run). docs/method.md, "Task samplers".
    """

    name = "confusion"
    description = ("adaptive class-pair sampling (Liu et al. 2020): pairs the model confuses "
                   "(sampler_discount, sampler_scale)")
    learns = True
    settings = (
        Setting("train.sampler_discount", float, 0.5, "confusion: the share of a class pair's "
                "old potential kept at each update (Liu et al.'s tau)", minimum=0, maximum=1),
        Setting("train.sampler_scale", float, 1.0, "confusion: how strongly a step's confusion "
                "raises a pair's potential (Liu et al.'s alpha)", minimum=0),
    )

    def __init__(self, pool, config, class_embeddings=None):
        super().__init__(pool, config, class_embeddings)
        self.log_potential = np.zeros((self.pool_size, self.pool_size))
        self.row_potential = np.zeros(self.pool_size)
        self.refresh_rows(range(self.pool_size))
        self.discount = config.train.sampler_discount
        self.scale = config.train.sampler_scale

    def choose(self, rng: np.random.Generator, ways: int) -> np.ndarray:
        a = pick_softmax(rng, self.row_potential, [])
        b = pick_softmax(rng, self.log_potential[a], [a])
        chosen = [a, b]
        for _ in range(ways - 2):
            chosen.append(pick_softmax(rng, self.log_potential[chosen].sum(0), chosen))
        return np.sort(np.asarray(chosen, dtype=np.int64))

    def refresh_rows(self, rows) -> None:
        """row_potential[a] = log of the sum over b != a of C(a, b), recomputed from the
        potentials alone (one row at a time, always alike): drawing a by it, then b by C(a, b),
        draws the pair (a, b) by C(a, b), at O(N) a draw instead of O(N^2)."""
        for a in rows:
            score = self.log_potential[a].copy()
            score[a] = -np.inf
            top = score.max()
            self.row_potential[a] = top + np.log(np.exp(score - top).sum())

    def observe(self, chosen: np.ndarray, confusion: np.ndarray) -> None:
        n = len(chosen)
        sums, counts = confusion[:, :n], confusion[:, n]
        for i, j in itertools.combinations(range(n), 2):
            if counts[i] == 0 or counts[j] == 0:
                continue  # the step showed no image of one of the two: nothing learnt
            value = (sums[i, j] + sums[j, i]) / (counts[i] + counts[j])
            a, b = int(chosen[i]), int(chosen[j])
            updated = self.discount * self.log_potential[a, b] + self.scale * value
            self.log_potential[a, b] = self.log_potential[b, a] = updated
        self.refresh_rows([int(c) for c in chosen])

    def state_dict(self) -> dict:
        """Only the pairs whose potential left its prior (floats round-trip exactly in JSON)."""
        a, b = np.nonzero(np.triu(self.log_potential, 1))
        pairs = [[int(i), int(j), float(self.log_potential[i, j])] for i, j in zip(a, b)]
        return {**super().state_dict(), "log_potential": pairs}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.log_potential[:] = 0.0
        for a, b, value in state.get("log_potential", []):
            self.log_potential[a, b] = self.log_potential[b, a] = value
        self.refresh_rows(range(self.pool_size))


catalogue.join("samplers", names=names, settings=settings, get=sampler_class)
