"""The Method interface and the registry every method joins (docs/method.md).

A method is one class in one file under `mamf/methods/`, registered with `@register`. It reads in
the order of its pseudo-code:

1. `begin`: what training needs once (the optimiser, the stream of step data from the run's
   seeded generator and task sampler);
2. `step`: what one training step consumes and how it updates;
3. `adapt`: how it adapts to a test task before the query set is scored;
4. `score`: how it scores a task's query set (default: the adapted model's image embeddings
   against the class prompts' text embeddings); test-time baselines such as Tip-Adapter score
   otherwise;
5. `tune`: hyper-parameters chosen on dev-split tasks before the meta-test (default: none).

A method's own settings are declared on its class (`settings`, `mamf.catalogue.Setting`): the
config gains them, checks them and `mamf methods` lists them.

The one training loop (`mamf.engine.training.train`) owns progress, losses, checkpoints, resume and the
DDP/FSDP lifecycle, and calls these; the one meta-test (`mamf.engine.metatest`) calls `tune`, `adapt`
and `score`. Nothing
outside this package branches on a method's name: it asks the class (`trains`,
`trains_per_ways`, `draws_tasks`, `data_parallel`).
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

REGISTRY: dict[str, type[Method]] = {}
# the attribute under which a method's own trained module joins the model (CoOp's context), so
# that checkpoints, the meta-test's snapshots and a run's weights file carry it with the model
EXTENSION = "method_extension"


class PastTheEnd(Exception):
    """A resumed stream state lies past the end of this run's stream (another run's checkpoint)."""


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method reachable by its `name` everywhere (CLI, configs, grids).
    A built-in method's table record is in `presentation.BUILTIN`; any other brings its own as
    the class's `presentation`."""
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
    return tuple(c.name for c in ordered if trained is None or c.trains == trained)


def settings() -> list[Setting]:
    """The registered methods' settings, in registration order, each key once."""
    return gather(cls.settings for cls in REGISTRY.values())


# names a method no longer goes by, and what to use instead
RENAMED = {"linear-probe": "zs-probe (mamf's zero-shot-initialised probe, which this name meant "
                           "until issue 41) or linear-probe-clip (CoOp's, the field's 'Linear "
                           "probe')"}



def method_class(name: str) -> type[Method]:
    if name in RENAMED:
        raise MamfError(f"method {name!r} was renamed: use {RENAMED[name]}")
    if name not in REGISTRY:
        raise MamfError(f"unknown method {name!r}: use {', '.join(REGISTRY)}")
    return REGISTRY[name]


def rates(name: str) -> list[str]:
    """The rates a method's results depend on (training, inner, test-time): what symmetric
    tuning must put in its grid."""
    cls = method_class(name)
    shown = cls.presentation
    found = [shown.train_rate if cls.trains else None, shown.inner_rate, shown.adapt_rate]
    return [r for r in found if r is not None]


def create(name: str, config: Config) -> Method:
    return method_class(name)(config)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
    if not params:
        raise MamfError("nothing to train: every parameter is frozen")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                            **fused_optimizer_options(params))


class Method:
    """One way to train on the training pool and to adapt to a test task.

    An instance serves one training run (or one meta-test): `begin` sets it up, then the loop
    calls `step(i)` for i = start, start+1, ... until `steps` (or until `step` returns None for a
    stream of unknown length). `stream_state`/`load_stream_state` carry everything the stream
    has drawn (generator, task sampler) into checkpoints, so a killed run resumes bit-exactly.
    """

    name: ClassVar[str]
    presentation: ClassVar[Presentation]  # how tables, figures and listings show it
    trains: ClassVar[bool] = True
    trains_per_ways: ClassVar[bool] = False  # training depends on the task size n
    draws_tasks: ClassVar[bool] = False  # training draws n-way tasks from `train.sampler`
    data_parallel: ClassVar[bool] = True  # under torchrun: DDP/FSDP over shares of each batch
    # a test-time baseline (docs/method.md, "Baselines"): an experiment runs it only when it
    # names it; a grid with no `methods` list runs the paper's methods
    baseline: ClassVar[bool] = False
    # WiSE-FT (`metatest.interpolate`) mixes the trained weights with those training began from;
    # a method whose trained part is not among the model's weights when training begins (CoOp's
    # context) is scored as trained, at alpha null
    interpolates: ClassVar[bool] = True
    # training updates the model's trainable weights (LoRA's adapters under train.adapter=lora);
    # False for a method that trains only what it adds (CoOp's context): adapters would be
    # attached, kept and never trained
    trains_adapters: ClassVar[bool] = True
    # this method's settings (a subclass lists those it shares with its parent too)
    settings: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, config: Config):
        self.config = config
        self.steps: int | None = None
        self.images = 0  # images whose loss training back-propagated so far (docs: "Budgets")
        self.optimizer: torch.optim.Optimizer | None = None
        self.parallel = None
        self._walked: tuple[DualEncoder | None, list] = (None, [])

    # -- training --------------------------------------------------------------------------
    def extend(self, model: DualEncoder, inputs: ModelInputs) -> None:
        """Add to `model` what this method trains beyond the model's own weights (as
        `model.<EXTENSION>`), before a checkpoint is restored into it. Default: nothing, and
        nothing left there by another method (an experiment trains one model in turn)."""
        if hasattr(model, EXTENSION):
            delattr(model, EXTENSION)

    def load_extension(self, model: DualEncoder, state: dict[str, torch.Tensor]) -> None:
        """Rebuild the extension a finished run saved (its tensors `state`, named as in the
        model) so its weights can load. Default: this method has none."""
        raise MamfError(f"the run's weights hold a {self.name} extension it cannot rebuild")

    def begin(self, model: DualEncoder, inputs: ModelInputs, pool: Pool,
              rng: np.random.Generator, sampler: TaskSampler | None, parallel=None) -> None:
        raise NotImplementedError(f"{self.name} does not train")

    def step(self, i: int) -> float | None:
        raise NotImplementedError(f"{self.name} does not train")

    def stream_state(self) -> dict:
        raise NotImplementedError

    def load_stream_state(self, state: dict) -> None:
        raise NotImplementedError

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
        return self.parallel.params if self.parallel is not None else trainable(model)

    def trainable(self, model: DualEncoder) -> list[torch.nn.Parameter]:
        """`model`'s trainable parameters, walked once per model and not once per test task: the
        walk over a large model's modules costs more than a small head's whole adaptation."""
        if self._walked[0] is not model:
            self._walked = (model, trainable(model))
        return self._walked[1]

    def chance_classes(self, pool: Pool) -> int | None:
        """How many classes a training step's loss spreads over: its loss at chance is the log
        of it (`mamf.engine.chance`); None when it varies from step to step."""
        return None

    def chance_hint(self) -> str:
        """A setting of this method's besides the rate that can keep its loss at chance."""
        return ""

    # -- test time -------------------------------------------------------------------------
    tunes_on_dev: ClassVar[bool] = False  # `tune` chooses hyper-parameters on dev-split tasks

    def tune(self, model: DualEncoder, inputs: ModelInputs, dev_tasks: list[Task]) -> dict:
        """Choose hyper-parameters on dev-split tasks (never test ones); returns what was chosen,
        which the results row records. Default: nothing to choose."""
        return {}

    def predict(self, model: DualEncoder, inputs: ModelInputs, task: Task) -> np.ndarray:
        """The class (0..n-1) given to each query image: the (adapted) model against the class
        prompts. A method that scores otherwise overrides this, never `score`."""
        return predict(model, inputs, task)

    def score(self, model: DualEncoder, inputs: ModelInputs, task: Task) -> float:
        """Accuracy on the task's query set (`predict` against the query labels)."""
        return accuracy(self.predict(model, inputs, task), task)

    def fine_tuning(self) -> FineTuning | None:
        """How `adapt` fine-tunes, for the batched meta-test (`mamf.methods.batched`); None where this
        method adapts or predicts otherwise."""
        cls = type(self)
        if cls.adapt is not Method.adapt or cls.predict is not Method.predict:
            return None
        m = self.config.metatest
        return FineTuning("adam", m.lr, m.epochs, m.batch_size)

    def adapt(self, model: DualEncoder, inputs: ModelInputs, task: Task,
              rng: np.random.Generator) -> None:
        """Fine-tune on the support set with Adam (`metatest.lr`, `.epochs`, `.batch_size`)."""
        m = self.config.metatest
        if m.epochs == 0 or m.lr == 0:
            return
        if m.augment:
            inputs.reseed(rng)
        params = self.trainable(model)
        optimizer = torch.optim.Adam(params, lr=m.lr, **fused_optimizer_options(params))
        batches = epoch_batches(rng, task.support, task.support_labels, task.classes,
                                m.batch_size, m.epochs)
        run_batches(model, inputs, batches, optimizer, augment=m.augment)


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
