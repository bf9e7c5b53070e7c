"""The method interfaces and the registry every method joins (docs/method.md).

A method is one class in one file under `mamf/methods/`, registered with `@register`. Every
method is a `TestTimeMethod`; one that trains is a `TrainedMethod` too. It reads in the order of
its pseudo-code:

1. `begin` (trained): what training needs once (the optimiser, the stream of step data from the
   run's seeded generator and task sampler);
2. `step` (trained): what one training step consumes and how it updates;
3. `tune`: hyper-parameters chosen on dev-split tasks before the meta-test (default: none);
4. `adapt`: how it adapts to a test task; it returns the task's `Scorer`, which classifies the
   query set (default: fine-tuning, then the adapted model's image embeddings against the class
   prompts' text embeddings; test-time baselines such as Tip-Adapter score otherwise).

A method's own settings are declared on its class (`settings`, `mamf.catalogue.Setting`): the
config gains them, checks them and `mamf methods` lists them.

The one training loop (`mamf.engine.training.train`) owns progress, losses, checkpoints, resume
and the DDP/FSDP lifecycle, and calls the first two; the one meta-test (`mamf.engine.metatest`)
calls `tune` and `adapt`, and the scorers. Nothing outside this package branches on a method's
name: it asks the class (`issubclass(cls, TrainedMethod)`, then its `trains_per_ways`,
`draws_tasks`, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from mamf import catalogue
from mamf.catalogue import Setting, gather
from mamf.features.inputs import autocast
from mamf.methods import presentation
from mamf.methods.batched import FineTuning
from mamf.methods.embedded import finite
from mamf.methods.finetune import epoch_batches, run_batches, trainable
from mamf.methods.scorer import Scorer
from mamf.models.base import require
from mamf.models.loss import task_logits
from mamf.system.device import fused_optimizer_options
from mamf.system.errors import MamfError

if TYPE_CHECKING:
    from mamf.catalogue import Config
    from mamf.data.dataset import Pool
    from mamf.features.inputs import ModelInputs
    from mamf.methods.presentation import Presentation
    from mamf.models.base import DualEncoder
    from mamf.tasks.samplers import TaskSampler
    from mamf.tasks.task import Task

REGISTRY: dict[str, type[TestTimeMethod]] = {}
# the attribute under which a method's own trained module joins the model (CoOp's context), so
# that checkpoints, the meta-test's snapshots and a run's weights file carry it with the model
EXTENSION = "method_extension"


class PastTheEnd(Exception):
    """A resumed stream state lies past the end of this run's stream (another run's checkpoint)."""


def register(cls: type[TestTimeMethod]) -> type[TestTimeMethod]:
    """Class decorator: make a method reachable by its `name` everywhere (CLI, configs, grids).

    Args:
        cls: a `TestTimeMethod` (and a `TrainedMethod` if it trains) with a unique `name`. A
            built-in method's table record is in `presentation.BUILTIN`; any other brings its
            own as the class's `presentation`.

    Returns:
        `cls`, registered.
    """
    if not issubclass(cls, TestTimeMethod):
        raise ValueError(f"method {cls.name!r} must be a TestTimeMethod: every method meets the "
                         "test tasks")
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} is registered twice")
    own = cls.__dict__.get("presentation")
    if own is None and cls.name not in presentation.BUILTIN:
        raise ValueError(f"method {cls.name!r} needs a presentation (label, description, ...)")
    cls.presentation = own or presentation.BUILTIN[cls.name]
    presentation.SHOWN[cls.name] = cls.presentation
    REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Forget a method registered at run time (a test's plug-in), its record too."""
    REGISTRY.pop(name)
    if name not in presentation.BUILTIN:
        presentation.SHOWN.pop(name, None)


def names(trained: bool | None = None) -> tuple[str, ...]:
    """Registered method names in table order; `trained` keeps only those that do (not) train."""
    ordered = sorted(REGISTRY.values(), key=lambda c: (c.presentation.order, c.name))
    return tuple(c.name for c in ordered
                 if trained is None or issubclass(c, TrainedMethod) == trained)


def settings() -> list[Setting]:
    """The registered methods' settings, in registration order, each key once."""
    return gather(cls.settings for cls in REGISTRY.values())


# names a method no longer goes by, and what to use instead
RENAMED = {"linear-probe": "zs-probe (mamf's zero-shot-initialised probe, which this name meant "
                           "until issue 41) or linear-probe-clip (CoOp's, the field's 'Linear "
                           "probe')"}



def method_class(name: str) -> type[TestTimeMethod]:
    """The registered class of `name` (one error line for an unknown or renamed name)."""
    if name in RENAMED:
        raise MamfError(f"method {name!r} was renamed: use {RENAMED[name]}")
    if name not in REGISTRY:
        raise MamfError(f"unknown method {name!r}: use {', '.join(REGISTRY)}")
    return REGISTRY[name]


def check_model(names: list[str], model: DualEncoder) -> None:
    """One line, before anything trains, for the first of the methods `names` whose `needs`
    the model's family lacks (CoOp without input embeddings, ProLIP without projection heads)."""
    for name in dict.fromkeys(names):
        method_class(name).check_model(model)


def rates(name: str) -> list[str]:
    """The rates a method's results depend on (training, inner, test-time): what symmetric
    tuning must put in its grid."""
    cls = method_class(name)
    shown = cls.presentation
    found = [shown.train_rate if issubclass(cls, TrainedMethod) else None, shown.inner_rate,
             shown.adapt_rate]
    return [r for r in found if r is not None]


def create(name: str, config: Config) -> TestTimeMethod:
    """A fresh instance of the method `name`.

    Args:
        name: a registered name (`names()`; `mamf methods` lists them).
        config: the run's settings.

    Returns:
        The method, a `TestTimeMethod` (and a `TrainedMethod` if it trains).

    Example:

    >>> method = create("tip-adapter", build_config({}))
    >>> isinstance(method, TrainedMethod)
    False
    """
    return method_class(name)(config)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
    if not params:
        raise MamfError("nothing to train: every parameter is frozen")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                            **fused_optimizer_options(params))


class Method:
    """What every method is: a name, a table record, the settings it reads, and the config it
    was made with. A registered method is a `TestTimeMethod` (every method meets the test
    tasks); one that trains on the training pool is a `TrainedMethod` too, so `isinstance`
    (`issubclass` on a class) says what a method does.

    Args:
        config: the run's settings; a method reads the core ones and only those of its own
            `settings`.

    Example (a test-time baseline and its registration; its table record is `presentation`):

    >>> from mamf.methods.base import TestTimeMethod, register
    >>> from mamf.methods.embedded import EmbeddingScorer, embed_task
    >>> from mamf.methods.presentation import Presentation
    >>> from mamf.methods.prototype import prototypes
    >>> from mamf.catalogue import Setting
    >>> @register
    ... class Nearest(TestTimeMethod):
    ...     name = "nearest"
    ...     presentation = Presentation(label="Nearest mean", order=90, description="...",
    ...                                 adapt_rate=None, adapt_epochs=None)
    ...     only_when_named = True
    ...     settings = (Setting("baseline.nearest_mix", float, 1.0, "the means' weight",
    ...                         minimum=0, maximum=1),)
    ...     def adapt(self, model, inputs, task, rng):
    ...         embedded = embed_task(model, inputs, task)
    ...         means = prototypes(embedded, self.config.baseline.nearest_mix)
    ...         return EmbeddingScorer(embedded, lambda f: f @ means.T)

    (docs/architecture.md, "Settings, and adding a method with a setting", writes it out.)
    """

    name: ClassVar[str]
    presentation: ClassVar[Presentation]  # how tables, figures and listings show it
    # an experiment runs it only when its `methods` list names it (a baseline, docs/method.md
    # "Baselines"); a grid with no `methods` list runs the others
    only_when_named: ClassVar[bool] = False
    # this method's settings (a subclass lists those it shares with its parent too)
    settings: ClassVar[tuple[Setting, ...]] = ()
    # the model capabilities (`mamf.models.base` mixins, e.g. `PromptLearnable`) it cannot run
    # without, each with what it needs it for: an experiment refuses a grid whose model lacks
    # one before anything trains
    needs: ClassVar[dict[type, str]] = {}

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def check_model(cls, model: DualEncoder) -> None:
        """Refuse, in one line, a model whose family lacks a capability this method `needs`."""
        for capability, what in cls.needs.items():
            require(model, capability, f"{cls.name} needs {what}")


class TestTimeMethod(Method):
    """How a method meets a test task: `tune` once on dev-split tasks (optional), then, for each
    test task from the trained weights, `adapt` on its support set, which returns a `Scorer`
    that classifies its query images. Default: fine-tune the model's trainable weights on the
    support set with Adam (`metatest.lr`, `.epochs`, `.batch_size`) and score the adapted model
    against the class prompts.

    Nothing of one task stays on the instance: what `adapt` fits goes into the scorer it
    returns (what `tune` chooses is the method's, and stays).

    Example (zero-shot: no adaptation):

    >>> @register
    ... class ZeroShot(TestTimeMethod):
    ...     name = "zeroshot"
    ...     def adapt(self, model, inputs, task, rng):
    ...         return ModelScorer(model, inputs, task)
    """

    __test__ = False  # a library class whose name starts with Test: not a pytest test class

    tunes_on_dev: ClassVar[bool] = False  # `tune` chooses hyper-parameters on dev-split tasks

    def __init__(self, config: Config):
        super().__init__(config)
        self._walked: tuple[DualEncoder | None, list] = (None, [])

    def tune(self, model: DualEncoder, inputs: ModelInputs, dev_tasks: list[Task]) -> dict:
        """Choose hyper-parameters on dev-split tasks (never test ones), kept on the method for
        every test task after (set `tunes_on_dev`, so the dev split is drawn).

        Args:
            model: the trained (or pretrained) model, as every test task starts from it.
            inputs: how the model reads images and prompts (caches, device, precision).
            dev_tasks: tasks drawn from the dev split as the test tasks are.

        Returns:
            What was chosen (the results row records it). Default: nothing to choose, {}.
        """
        return {}

    def adapt(self, model: DualEncoder, inputs: ModelInputs, task: Task,
              rng: np.random.Generator) -> Scorer:
        """Adapt to one test task's support set.

        Args:
            model: the model, at the trained weights; it may be changed in place (the meta-test
                restores its trainable weights before the next task).
            inputs: how the model reads the task's images and prompts.
            task: the test task (support and query images, the n classes).
            rng: this task's own generator (batches, augmentation, random starts).

        Returns:
            The task's `Scorer`, valid until the model is next changed. Default: fine-tuned
            with Adam (`metatest.lr`, `.epochs`, `.batch_size`), the adapted model itself
            against the class prompts (`ModelScorer`).
        """
        m = self.config.metatest
        if m.epochs == 0 or m.lr == 0:
            return ModelScorer(model, inputs, task)
        if m.augment:
            inputs.reseed(rng)
        params = self.trainable(model)
        optimizer = torch.optim.Adam(params, lr=m.lr, **fused_optimizer_options(params))
        batches = epoch_batches(rng, task.support, task.support_labels, task.classes,
                                m.batch_size, m.epochs)
        run_batches(model, inputs, batches, optimizer, augment=m.augment)
        return ModelScorer(model, inputs, task)

    def fine_tuning(self) -> FineTuning | None:
        """How `adapt` fine-tunes, for the batched meta-test (`mamf.methods.batched`), which
        gives every task the same updates; None where this method adapts otherwise."""
        if type(self).adapt is not TestTimeMethod.adapt:
            return None
        m = self.config.metatest
        return FineTuning("adam", m.lr, m.epochs, m.batch_size)

    def trainable(self, model: DualEncoder) -> list[torch.nn.Parameter]:
        """`model`'s trainable parameters, walked once per model and not once per test task: the
        walk over a large model's modules costs more than a small head's whole adaptation."""
        if self._walked[0] is not model:
            self._walked = (model, trainable(model))
        return self._walked[1]


class TrainedMethod(Method):
    """How a method trains on the training pool, through the one training loop
    (`mamf.engine.training.train`, which owns progress, losses, checkpoints, resume and the
    DDP/FSDP lifecycle). A method that trains is a `TestTimeMethod` too.

    An instance serves one training run: `add_to_model` puts what it trains beyond the model's
    weights on the model, `begin` sets it up, then the loop calls `step(i)` for i = start,
    start+1, ... until `steps` (or until `step` returns None for a stream of unknown length).
    `stream_state`/`load_stream_state` carry everything the stream has drawn (generator, task
    sampler) into checkpoints, so a killed run resumes bit-exactly.

    Example (classical fine-tuning, abridged from `mamf.methods.classical`):

    >>> @register
    ... class Classical(TrainedMethod, TestTimeMethod):
    ...     name = "classical"
    ...     def begin(self, model, inputs, pool, rng, sampler, parallel=None):
    ...         self.model, self.inputs, self.parallel = model, inputs, parallel
    ...         images, labels = pool.all_images()
    ...         self.stream = EpochStream(rng, images, labels, pool.classes, 32)
    ...         self.steps = 100
    ...         self.optimizer = make_optimizer(self.params(model), 1e-5)
    ...     def step(self, i):
    ...         batch = next(self.stream)
    ...         self.images += len(batch.images)
    ...         return step(self.model, self.inputs, batch, self.optimizer, "all", False,
    ...                     self.parallel)
    ...     def stream_state(self):
    ...         return self.stream.state_dict()
    ...     def load_stream_state(self, state):
    ...         self.stream.load_state_dict(state)
    """

    # training depends on the task size n: one run a size (MAMF, FOMAML)
    trains_per_ways: ClassVar[bool] = False
    draws_tasks: ClassVar[bool] = False  # training draws n-way tasks from `train.sampler`
    data_parallel: ClassVar[bool] = True  # under torchrun: DDP/FSDP over shares of each batch
    # WiSE-FT (`metatest.interpolate`) mixes the trained weights with those training began from;
    # a method whose trained part is not among the model's weights when training begins (CoOp's
    # context) is scored as trained, at alpha null
    interpolates: ClassVar[bool] = True
    # training updates the model's trainable weights (LoRA's adapters under train.adapter=lora);
    # False for a method that trains only what it adds (CoOp's context): adapters would be
    # attached, kept and never trained
    trains_adapters: ClassVar[bool] = True

    def __init__(self, config: Config):
        super().__init__(config)
        self.steps: int | None = None
        self.images = 0  # images whose loss training back-propagated so far (docs: "Budgets")
        self.optimizer: torch.optim.Optimizer | None = None
        self.parallel = None

    def add_to_model(self, model: DualEncoder, inputs: ModelInputs) -> None:
        """Add to `model` the module this method trains beyond the model's own weights (as
        `model.<EXTENSION>`), before a checkpoint is restored into it. Default: nothing, and
        nothing left there by another method (an experiment trains one model in turn).

        Args:
            model: the model about to be trained.
            inputs: how it reads images and prompts (CoOp tokenises the dataset's classes).
        """
        if hasattr(model, EXTENSION):
            delattr(model, EXTENSION)

    def load_extension(self, model: DualEncoder, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the module `add_to_model` added, from a finished run's saved tensors `state`
        (named as in the model), so that its weights can load. Default: this method has none."""
        raise MamfError(f"the run's weights hold a {self.name} extension it cannot rebuild")

    def begin(self, model: DualEncoder, inputs: ModelInputs, pool: Pool,
              rng: np.random.Generator, sampler: TaskSampler | None, parallel=None) -> None:
        """Set up training: the stream of step data, `steps` (None: the stream says when it
        ends) and `optimizer`.

        Args:
            model: the model to train (its trainable parameters; `add_to_model` ran first).
            inputs: how it reads images and prompts.
            pool: the training split's classes and images.
            rng: the run's seeded generator, every draw of the stream from it.
            sampler: the task sampler where `draws_tasks`, else None.
            parallel: the DDP/FSDP wrapper under torchrun for a `data_parallel` method.
        """
        raise NotImplementedError(f"{self.name} does not say how it begins training")

    def step(self, i: int) -> float | None:
        """Take training step `i`. Returns its loss (a float, or a tensor the loop reads
        later), or None when a stream of unknown length has ended."""
        raise NotImplementedError(f"{self.name} does not say how it steps")

    def stream_state(self) -> dict:
        """Everything the stream has drawn (generator, sampler), for a checkpoint."""
        raise NotImplementedError(f"{self.name} does not say what its stream holds")

    def load_stream_state(self, state: dict) -> None:
        """Restore `stream_state`'s dict (raise `PastTheEnd` for another run's)."""
        raise NotImplementedError(f"{self.name} does not say what its stream holds")

    def optimizer_state(self) -> dict:
        """The whole optimiser state (gathered from the ranks under FSDP), for checkpoints."""
        if self.parallel is not None:
            return self.parallel.full_state(self.optimizer)
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict) -> None:
        if self.parallel is not None:
            self.parallel.load_state(self.optimizer, state)
        else:
            self.optimizer.load_state_dict(state)

    def params(self, model: DualEncoder) -> list[torch.nn.Parameter]:
        """What the optimiser updates: the model's trainable parameters (their shards under
        FSDP)."""
        return self.parallel.params if self.parallel is not None else trainable(model)

    def chance_classes(self, pool: Pool) -> int | None:
        """How many classes a training step's loss spreads over: its loss at chance is the log
        of it (`mamf.engine.chance`); None when it varies from step to step."""
        return None

    def chance_hint(self) -> str:
        """A setting of this method's besides the rate that can keep its loss at chance."""
        return ""


class ModelScorer(Scorer):
    """A task scored by the (adapted) model itself: each query image against the task's class
    prompts.

    Args:
        model: the model as adapted to the task.
        inputs: how it reads the query images and prompts.
        task: the task whose query images it classifies.
    """

    def __init__(self, model: DualEncoder, inputs: ModelInputs, task: Task):
        self.model, self.inputs, self.task = model, inputs, task

    def predict(self) -> np.ndarray:
        return predict(self.model, self.inputs, self.task)


@torch.no_grad()
def predict(model: DualEncoder, inputs: ModelInputs, task: Task,
            batch_size: int = 256) -> np.ndarray:
    """The class (0..n-1) of the task's n class prompts nearest each query image."""
    out = []
    with autocast(inputs.device, inputs.precision):
        text_emb = inputs.texts(model, task.classes)
        for start in range(0, len(task.query), batch_size):
            idx = task.query[start : start + batch_size]
            logits = task_logits(model.logit_scale(), inputs.images(model, idx), text_emb)
            out.append(finite(logits).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(predicted: np.ndarray, task: Task) -> float:
    """The share of the task's query images given their own class."""
    return int((np.asarray(predicted) == task.query_labels).sum()) / len(task.query)


def score(model: DualEncoder, inputs: ModelInputs, task: Task, batch_size: int = 256) -> float:
    """Accuracy of the query images against the task's n class prompts."""
    return accuracy(predict(model, inputs, task, batch_size), task)


catalogue.join("methods", names=names, settings=settings, get=method_class)
