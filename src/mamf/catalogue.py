"""The settings catalogue: what a setting is (`Setting`: its dotted key, type, default, range and
one line of help), every setting that exists, the core's and each plug-in's, and the `Config`
whose sections are built from them.

The core settings (the model, the data and protocol, training, the meta-test) are declared here;
a plug-in (a method, a task sampler, a protocol, a model family) declares its own where it is
written (`settings = (Setting(...), ...)` on its class), and its registry `join`s the catalogue.
The catalogue imports no plug-in and nothing heavy, so anything may import it (for `Setting`,
`Config`, `unfrozen`, ...), the command line's parser included (its flags' help comes from the core
declarations); the composition root, `mamf.plugins`, imports the built-in plug-ins for the entry
points. Reading and checking a config from YAML and the command line is `mamf.config`'s job;
`mamf methods` lists every declaration.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mamf.system.errors import MamfError, shown

# the bound of every rate and weight decay (`maximum=MAX_RATE`): float32 holds at most 3.4e38,
# and an optimiser's step raised a RuntimeError past it (Adam divides its rate by the bias
# correction, 0.1 at the first step). 1e30 leaves that headroom and still diverges at once
# where a test wants divergence
MAX_RATE = 1e30


@dataclass(frozen=True, eq=False)
class Setting:
    """One setting. `minimum`/`maximum` bound a number (each number of a list); `above`/`below`
    refuse the bound itself (`minimum=0, above=True`: positive). `choices` is a tuple of words or
    a callable giving them (a registry's names, asked when a config is checked)."""

    key: str  # "section.name" (data, train, metatest, baseline), or a top-level name
    type: object  # int, float, str, bool, list[float], int | None, ...
    default: object
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False
    below: bool = False
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    nonempty: bool = False  # a list must hold a value
    length: int | None = None  # a list must hold exactly this many values

    @property
    def section(self) -> str:
        return self.key.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]

    def new_default(self):
        """The default, a fresh copy (a list default is never shared between configs)."""
        return copy.deepcopy(self.default)

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices

    def check(self, value) -> None:
        """One error line when `value` (already of the declared type) is outside the declared
        range or choices; None (an unset optional setting) always passes."""
        if value is None:
            return
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise MamfError(f"config {self.key} must be one of {', '.join(allowed)}; "
                            f"got {shown(value)}")
        if self.nonempty and not value:
            raise MamfError(f"config {self.key} must not be empty")
        if self.length is not None and len(value) != self.length:
            raise MamfError(f"config {self.key} must hold exactly {self.length} values, got "
                            f"{shown(value)}")
        each = isinstance(value, list)
        for v in value if each else [value]:
            broken = self._broken(v)
            if broken:
                what = f"config {self.key}{' (each value)' if each else ''}"
                raise MamfError(f"{what} must {broken}, got {shown(v)}")

    def _broken(self, v) -> str:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            return ""
        lo, hi = self.minimum, self.maximum
        if lo is not None and (v <= lo if self.above else v < lo):
            if lo == 0:
                return "be positive" if self.above else "not be negative"
            return f"be above {_number(lo)}" if self.above else f"be at least {_number(lo)}"
        if hi is not None and (v >= hi if self.below else v > hi):
            return f"be below {_number(hi)}" if self.below else f"be at most {_number(hi)}"
        return ""

    def describe(self) -> str:
        """`key = default`, the range or choices, and the help: one line for `mamf methods`."""
        default = "unset" if self.default is None else \
            (str(self.default).lower() if isinstance(self.default, bool) else
             repr(self.default) if isinstance(self.default, str) else str(self.default))
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.above else '>='} {_number(self.minimum)}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.below else '<='} {_number(self.maximum)}")
        if isinstance(self.choices, tuple):
            bounds.append("|".join(self.choices))
        rule = f" ({', '.join(bounds)})" if bounds else ""
        return f"{self.key} = {default}{rule}: {self.help}" if self.help else \
            f"{self.key} = {default}{rule}"


def gather(groups: Iterable[Iterable[Setting]]) -> list[Setting]:
    """Settings in order, each key once. A setting read by two plug-ins (CoCoOp reads CoOp's
    context length) is one declaration both name; two declarations of one key are a mistake."""
    out: dict[str, Setting] = {}
    for setting in (s for group in groups for s in group):
        if out.setdefault(setting.key, setting) is not setting:
            raise ValueError(f"setting {setting.key!r} is declared twice")
    return list(out.values())


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


SECTIONS = ("data", "train", "metatest", "baseline")
# counts of classes and images per task: anything larger is a typo, and is refused before it
# reaches a loop or a message
AT_MOST = {"data.ways": 10**6, "data.start_n": 10**6, "data.shots": 10**6, "data.queries": 10**6,
           "data.tasks": 10**7}
# numpy's SeedSequence takes any n >= 0 and torch.manual_seed any n < 2**64: the signed 64-bit
# range's top keeps a seed valid for both and for any tool that stores it as an int64
MAX_SEED = 2**63 - 1
SEEDS = ("seed", "data.split_seed")


@dataclass(frozen=True)
class Slot:
    """Where a kind of plug-in's settings sit among the core settings of the section it is in (a
    kind without a slot in a section has its settings at the section's end)."""

    kind: str


def _count(key: str, default: int, help: str) -> Setting:
    return Setting(key, int, default, help, minimum=0, above=True, maximum=AT_MOST[key])


class Registered:
    """A setting's choices: the names a kind of plug-in has registered, asked when a config is
    checked (so the catalogue imports no plug-in)."""

    def __init__(self, kind: str, **which):
        self.kind, self.which = kind, which

    def __call__(self) -> tuple[str, ...]:
        return names_of(self.kind, **self.which)


# the core settings, in the order a config lists them (docs/method.md, "Defaults")
CORE = (
    Setting("model", str, "effnet-minilm", "a built-in name (`mamf models`), a CLIP or SigLIP "
            "model folder, or a hub id"),
    Setting("seed", int, 312, "seed for tasks, training and adaptation"),
    Setting("device", str, "auto", "where to run", choices=("auto", "cpu", "cuda")),
    Setting("precision", str, "auto", "autocast precision (auto: bf16 on a GPU that has it "
            "natively, fp32 elsewhere; fp16 is refused: it needs loss scaling)",
            choices=("auto", "fp32", "bf16", "fp16")),
    # data: which images, which prompts, which protocol and task shape
    Setting("data.root", str, "", "image folder: <root>/<label>/<image> or "
            "<root>/<subdataset>/<label>/<image>"),
    Setting("data.subdataset", str | None, None, "which subdataset of a nested folder"),
    Setting("data.template", str, "A photo of a {label}.", "prompt template with {label}; a "
            "label_to_text.json beside the data wins"),
    Setting("data.templates", list[str] | None, None, "a prompt ensemble instead of `template`: "
            "templates with {label} (or {}), or one set's name (imagenet: CLIP's 80 ImageNet "
            "templates); a class's embedding is the mean of the normalised ones"),
    Setting("data.protocol", str, "paper", "how a dataset becomes tasks (docs/method.md, "
            "\"Protocols\")", choices=Registered("protocols")),
    _count("data.ways", 5, "task size n for methods that train on tasks, and of test tasks"),
    Setting("data.start_n", int, 2, "the smallest task size of `--ways all`", minimum=2,
            maximum=AT_MOST["data.start_n"]),
    _count("data.shots", 1, "episodic: support images per class; coop, base2novel: training "
           "shots per class"),
    _count("data.queries", 15, "episodic: query images per class"),
    _count("data.tasks", 600, "episodic: number of test episodes"),
    Setting("data.class_split", list[float], [0.6, 0.2, 0.2], "the train, dev and test shares"),
    Setting("data.split_seed", int, 0, "seed of the class or image split"),
    Setting("data.support_match", str | None, None, "support images are those whose file name "
            "holds this (with data.query_match)"),
    Setting("data.query_match", str | None, None, "query images are those whose file name holds "
            "this (with data.support_match)"),
    Setting("data.split_file", str | None, None, "coop and base2novel: a CoOp split file "
            "(split_zhou_<Dataset>.json) instead of 60/20/20 per class"),
    Setting("data.train_match", str | None, None, "training uses only images whose file name "
            "holds this (e.g. one emoji vendor's set)", nonempty=True),
    # train: how a method fine-tunes on the training pool
    Setting("train.method", str, "mamf", "the method that trains (`mamf methods`)",
            choices=Registered("methods", trained=True)),
    Slot("samplers"),  # train.sampler and the task samplers' own settings
    Setting("train.lr", float, 1e-6, "Adam learning rate", minimum=0, above=True,
            maximum=MAX_RATE),
    Setting("train.epochs", float, 8.0, "passes over the training pool", minimum=0, above=True),
    Setting("train.batch_size", int, 32, "images per step", minimum=0, above=True),
    Setting("train.steps", int | None, None, "optimiser steps (unset: from train.epochs)",
            minimum=0, above=True),
    Setting("train.budget", str, "native", "matched: every method gets classical fine-tuning's "
            "updates and images per update; native: each method's own schedule "
            "(docs/method.md, \"Budgets\"); experiments default to matched",
            choices=("matched", "native")),
    Setting("train.heads", str, "pretrained", "random: fresh projection heads, as the official "
            "code", choices=("pretrained", "random")),
    Setting("train.schedule", str, "sampled", "mamf: a task drawn per step (sampled) or the "
            "official K tasks in turn (sequential)", choices=("sampled", "sequential")),
    Setting("train.candidates", str, "task", "the loss over the task's classes (task) or only "
            "the batch's (batch, official)", choices=("task", "batch")),
    Slot("methods"),  # a method's own train settings (fomaml's inner loop)
    Setting("train.augment", bool, True, "random crops and flips of training images"),
    Setting("train.crop_scale", float, 0.8, "the smallest crop's share of the image's area",
            minimum=0, above=True, maximum=1),
    Setting("train.freeze_image_backbone", bool, False, "the image tower is frozen (its outputs "
            "cached)"),
    Setting("train.freeze_text_tower", bool, False, "the text tower is frozen (its outputs "
            "cached)"),
    Setting("train.unfreeze_image_blocks", int | str | None, None, "the last k blocks of the "
            "image tower train, the ones below are frozen and cached: k >= 0 (0: frozen) or all "
            "(end to end); unset: train.freeze_image_backbone decides"),
    Setting("train.unfreeze_text_layers", int | str | None, None, "the last k layers of the text "
            "tower train: k >= 0 or all; unset: train.freeze_text_tower decides"),
    Setting("train.weight_decay", float, 0.0, "Adam's weight decay", minimum=0,
            maximum=MAX_RATE),
    Setting("train.lr_schedule", str, "constant", "the rate over the steps: constant, or cosine "
            "decay from train.lr to 0 at the last step", choices=("constant", "cosine")),
    Setting("train.steps_per_shot", int | None, None, "steps = this x data.shots (CLIP-LoRA's "
            "\"500 x shots iterations\"); not with train.steps", minimum=0, above=True),
    Setting("train.checkpoint_every", int, 100, "steps between checkpoints", minimum=0),
    Setting("train.checkpoint_minutes", float | None, None, "minutes of training between "
            "checkpoints, written in the background (unset: train.checkpoint_every steps)",
            minimum=0, above=True),
    Setting("train.tf32", bool, True, "TF32 tensor cores for fp32 matmuls and convolutions on "
            "a CUDA GPU, in training and the meta-test (no effect on a CPU)"),
    Setting("train.compile", bool, False, "torch.compile the model's towers on a CUDA GPU (no "
            "effect on a CPU)"),
    Setting("train.log_dir", str | None, None, "TensorBoard scalars (loss, lr, images/s) go "
            "here (train_log.csv always has them); not a setting of the measurement"),
    Setting("train.eval_every", int | None, None, "every this many steps the dev split's tasks "
            "are scored into the log's dev_acc; not a setting of the measurement", minimum=0,
            above=True),
    Setting("train.parallel", str, "ddp", "under torchrun: ddp replicates the model, fsdp "
            "shards it (models too big for one GPU); train.batch_size stays the global batch",
            choices=("ddp", "fsdp")),
    Setting("train.adapter", str, "none", "lora: low-rank adapters (peft) train instead of the "
            "whole model (docs/method.md, \"LoRA\")", choices=("none", "lora")),
    Setting("train.lora_rank", int, 2, "LoRA's rank", minimum=0, above=True),
    Setting("train.lora_alpha", float, 1.0, "LoRA's alpha", minimum=0, above=True),
    Setting("train.lora_dropout", float, 0.0, "LoRA's dropout probability", minimum=0,
            maximum=1, below=True),
    Setting("train.lora_targets", list[str], [], "the layers LoRA adapts (empty: the model's "
            "own defaults)"),
    # metatest: per-test-task adaptation on the support set, then query scoring
    Setting("metatest.split", str, "test", "which split's tasks are scored (train: "
            "overfitting)", choices=("train", "dev", "test")),
    Setting("metatest.lr", float, 1e-7, "Adam rate of the adaptation to a test task's support "
            "set", minimum=0, maximum=MAX_RATE),
    Setting("metatest.epochs", int, 5, "passes over the support set (0: no adaptation)",
            minimum=0),
    Setting("metatest.batch_size", int, 8, "the adaptation's batch size", minimum=0, above=True),
    Setting("metatest.reset", bool, True, "the trained weights are restored before each task"),
    Setting("metatest.batched", bool, False, "adapt many test tasks at once where both towers "
            "are cached (torch.func; the same updates, an accuracy may differ by rounding)"),
    Setting("metatest.augment", bool, False, "random crops and flips of support images"),
    Slot("methods"),  # a method's own metatest settings (fomaml's test-time inner loop)
    Setting("metatest.interpolate", list[float], [], "WiSE-FT: score (1 - alpha) x zero-shot + "
            "alpha x trained weights, one row per alpha, each in [0, 1]; empty: the trained "
            "weights as they are"),
    Setting("metatest.save_predictions", bool, False, "keep each test task's predictions in its "
            "row (the report's per-class accuracy and confusion matrix read them); not a setting "
            "of the measurement"),
)
TOP = {s.key: s for s in CORE if isinstance(s, Setting) and not s.section}


class Section:
    """A section of a config (data, train, metatest, baseline): the dataclasses `section_class`
    builds from the declarations derive from it."""


def _section(name: str):
    return field(default_factory=lambda: section_class(name)())


@dataclass
class Config:
    """All the settings of a run: four top-level ones and the sections (`section_class`)."""

    model: str = TOP["model"].default
    seed: int = TOP["seed"].default
    device: str = TOP["device"].default
    precision: str = TOP["precision"].default
    data: Section = _section("data")
    train: Section = _section("train")
    metatest: Section = _section("metatest")
    baseline: Section = _section("baseline")


# the section classes under the names they had as hand-written dataclasses (pickle finds them so)
CLASS_NAMES = {"DataConfig": "data", "TrainConfig": "train", "MetaTestConfig": "metatest",
               "BaselineConfig": "baseline"}


def __getattr__(name: str):
    if name in CLASS_NAMES:
        return section_class(CLASS_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class PlugIns:
    """What a kind of plug-in (methods, samplers, protocols, models) tells the catalogue: its
    registered names and the settings they declare, asked each time (a plug-in registered later,
    as in a test, is seen)."""

    names: Callable[..., tuple[str, ...]]
    settings: Callable[[], list[Setting]]
    get: Callable[[str], object]


# kind -> its registry's answers, in the order the kinds joined (the composition root,
# `mamf.plugins`, imports them in the order a config lists their settings)
_PLUGINS: dict[str, PlugIns] = {}
KINDS = ("methods", "samplers", "protocols", "models")


def join(kind: str, names: Callable[..., tuple[str, ...]],
         settings: Callable[[], list[Setting]], get: Callable[[str], object]) -> None:
    """A registry of plug-ins joins the catalogue (called once, by the registry's module): its
    names, its plug-ins' settings, and the plug-in of a name (for rules between settings that
    ask a plug-in what it does, as `config.validate`'s)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of plug-in {kind!r}")
    _PLUGINS[kind] = PlugIns(names, settings, get)


def _joined(kind: str) -> PlugIns:
    if kind not in _PLUGINS:
        raise MamfError(f"no {kind} are registered: import mamf.plugins first")
    return _PLUGINS[kind]


def names_of(kind: str, **which) -> tuple[str, ...]:
    """The names a kind of plug-in has registered."""
    return _joined(kind).names(**which)


def plugin(kind: str, name: str):
    """The plug-in registered as `name` (its class, or a protocol's instance)."""
    return _joined(kind).get(name)


def plugin_settings() -> dict[str, list[Setting]]:
    """Each kind of plug-in's declared settings, in registration order."""
    missing = [k for k in KINDS if k not in _PLUGINS]
    if missing:
        raise MamfError(f"no {', '.join(missing)} are registered: import mamf.plugins first")
    return {kind: _PLUGINS[kind].settings() for kind in KINDS}


# per state of the registries: the declared settings and the sections' classes built from them
_MADE: dict[tuple, tuple[dict[str, Setting], dict[str, type]]] = {}


def _made() -> tuple[dict[str, Setting], dict[str, type]]:
    """Made once for each state of the registries: a plug-in registered later (as in a test)
    gets sections of its own."""
    plugins = plugin_settings()
    state = tuple((kind, tuple(map(id, settings))) for kind, settings in plugins.items())
    if state not in _MADE:
        settings = _order(plugins)
        _MADE[state] = settings, {section: _make(section, [s for s in settings.values()
                                                           if s.section == section])
                                  for section in SECTIONS}
    return _MADE[state]


def declared() -> dict[str, Setting]:
    """Every setting by its dotted key, in the order a config lists them."""
    return _made()[0]


def section_class(name: str) -> type:
    """The dataclass of section `name` (data, train, metatest, baseline)."""
    return _made()[1][name]


def _order(plugins: dict[str, list[Setting]]) -> dict[str, Setting]:
    """The core settings in their order, each kind of plug-in's at its `Slot`, or else at the
    end of their section."""
    known = {s.key for s in CORE if isinstance(s, Setting)}
    for kind, settings in plugins.items():
        for s in settings:
            if s.section not in SECTIONS or s.key in known:
                where = "is a core setting" if s.key in known else \
                    f"is not in a section ({', '.join(SECTIONS)})"
                raise ValueError(f"{kind}: setting {s.key!r} {where}")
    ordered: list[Setting] = []
    for section in ("", *SECTIONS):
        slotted, current = set(), ""
        for item in CORE:
            if isinstance(item, Setting):
                current = item.section
                if current == section:
                    ordered.append(item)
            elif current == section:  # a Slot, in the section of the setting before it
                slotted.add(item.kind)
                ordered += [s for s in plugins[item.kind] if s.section == section]
        ordered += [s for kind, settings in plugins.items() if kind not in slotted
                    for s in settings if s.section == section]
    return {s.key: s for s in gather([ordered])}


def _make(section: str, settings: list[Setting]) -> type:
    class_name = next(k for k, v in CLASS_NAMES.items() if v == section)
    fields = [(s.name, s.type, field(default_factory=s.new_default)) for s in settings]
    made = dataclasses.make_dataclass(class_name, fields, bases=(Section,))
    made.__module__ = __name__
    made.__doc__ = f"The {section} section: {', '.join(s.name for s in settings) or 'empty'}."
    return made


def value_of(config: Config, key: str):
    """The value of dotted `key` in `config`."""
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


UNFREEZE = {"unfreeze_image_blocks": "freeze_image_backbone",
            "unfreeze_text_layers": "freeze_text_tower"}


def unfrozen(train: Section) -> tuple[int | None, int | None]:
    """How many top blocks of the image tower and top layers of the text tower train: k >= 0
    (0: the tower is frozen), None: all of it (end to end). An unset `unfreeze_*` key follows its
    `freeze_*` key; the two may not disagree. The counts are checked against the model in
    `mamf.features.inputs`, which knows its towers."""
    out = []
    for key, old in UNFREEZE.items():
        value, frozen = getattr(train, key), getattr(train, old)
        if value is None:
            out.append(0 if frozen else None)
            continue
        if isinstance(value, str) and value != "all" or isinstance(value, int) and value < 0:
            raise MamfError(f"config train.{key} must be an integer >= 0 or all, got "
                            f"{shown(value)}")
        k = None if value == "all" else value
        if frozen and k != 0:
            raise MamfError(f"config train.{old}=true contradicts train.{key}={value}: "
                            f"set one of them")
        out.append(k)
    return out[0], out[1]


def check_seed(what: str, value: int) -> None:
    """Seeds reach numpy and torch: refuse one that either would reject."""
    if not 0 <= value <= MAX_SEED:
        raise MamfError(f"{what} must be an integer in [0, 2**63-1], got {shown(value)}")
