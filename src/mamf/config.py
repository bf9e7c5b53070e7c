"""Configuration: the declared settings, loadable from YAML, overridable from the command line.

Every setting is a `mamf.settings.Setting`: the core ones are declared here, a plug-in's in its
own file (a method's, a task sampler's, a protocol's, a model family's `settings`). The config's
sections (data, train, metatest, baseline) are dataclasses built from all of them the first time
a config is made, after the registries have loaded. Every key is checked: an unknown key, a value
of the wrong type or out of its declared range is one clear error, and YAML is read with
`safe_load`, so a config file can never import or execute anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mamf.errors import MamfError, shown
from mamf.settings import Setting, gather

SECTIONS = ("data", "train", "metatest", "baseline")
# counts of classes and images per task: anything larger is a typo, and is refused before it
# reaches a loop or a message
AT_MOST = {"data.ways": 10**6, "data.start_n": 10**6, "data.shots": 10**6, "data.queries": 10**6,
           "data.tasks": 10**7}
# numpy's SeedSequence takes any n >= 0 and torch.manual_seed any n < 2**64: the signed 64-bit
# range's top keeps a seed valid for both and for any tool that stores it as an int64
MAX_SEED = 2**63 - 1
SEEDS = ("seed", "data.split_seed")
# config and experiment files nest a handful of levels; anything far deeper is a mistake or an attack
MAX_DEPTH = 32


def _protocols() -> tuple[str, ...]:
    from mamf import protocols

    return protocols.names()


def _trained_methods() -> tuple[str, ...]:
    from mamf import methods

    return methods.names(trained=True)


@dataclass(frozen=True)
class Slot:
    """Where a kind of plug-in's settings sit among the core settings of the section it is in (a
    kind without a slot in a section has its settings at the section's end)."""

    kind: str


def _count(key: str, default: int, help: str) -> Setting:
    return Setting(key, int, default, help, minimum=0, above=True, maximum=AT_MOST[key])


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
            "templates); a class's embedding is the mean of the normalised ones", later=True),
    Setting("data.protocol", str, "paper", "how a dataset becomes tasks (docs/method.md, "
            "\"Protocols\")", choices=_protocols),
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
            "(split_zhou_<Dataset>.json) instead of 60/20/20 per class", later=True),
    Setting("data.train_match", str | None, None, "training uses only images whose file name "
            "holds this (e.g. one emoji vendor's set)", nonempty=True, later=True),
    # train: how a method fine-tunes on the training pool
    Setting("train.method", str, "mamf", "the method that trains (`mamf methods`)",
            choices=_trained_methods),
    Slot("samplers"),  # train.sampler and the task samplers' own settings
    Setting("train.lr", float, 1e-6, "Adam learning rate", minimum=0, above=True),
    Setting("train.epochs", float, 8.0, "passes over the training pool", minimum=0, above=True),
    Setting("train.batch_size", int, 32, "images per step", minimum=0, above=True),
    Setting("train.steps", int | None, None, "optimiser steps (unset: from train.epochs)",
            minimum=0, above=True),
    Setting("train.budget", str, "native", "matched: every method gets classical fine-tuning's "
            "updates and images per update; native: each method's own schedule "
            "(docs/method.md, \"Budgets\"); experiments default to matched",
            choices=("matched", "native"), later=True),
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
            "(end to end); unset: train.freeze_image_backbone decides", later=True),
    Setting("train.unfreeze_text_layers", int | str | None, None, "the last k layers of the text "
            "tower train: k >= 0 or all; unset: train.freeze_text_tower decides", later=True),
    Setting("train.weight_decay", float, 0.0, "Adam's weight decay", minimum=0),
    Setting("train.lr_schedule", str, "constant", "the rate over the steps: constant, or cosine "
            "decay from train.lr to 0 at the last step", choices=("constant", "cosine"), later=True),
    Setting("train.steps_per_shot", int | None, None, "steps = this x data.shots (CLIP-LoRA's "
            "\"500 x shots iterations\"); not with train.steps", minimum=0, above=True, later=True),
    Setting("train.checkpoint_every", int, 100, "steps between checkpoints", minimum=0),
    Setting("train.checkpoint_minutes", float | None, None, "minutes of training between "
            "checkpoints, written in the background (unset: train.checkpoint_every steps)",
            minimum=0, above=True, later=True),
    Setting("train.tf32", bool, True, "TF32 tensor cores for fp32 matmuls and convolutions on "
            "a CUDA GPU, in training and the meta-test (no effect on a CPU)", later=True),
    Setting("train.compile", bool, False, "torch.compile the model's towers on a CUDA GPU (no "
            "effect on a CPU)", later=True),
    Setting("train.log_dir", str | None, None, "TensorBoard scalars (loss, lr, images/s) go "
            "here (train_log.csv always has them); not a setting of the measurement"),
    Setting("train.eval_every", int | None, None, "every this many steps the dev split's tasks "
            "are scored into the log's dev_acc; not a setting of the measurement", minimum=0,
            above=True),
    Setting("train.parallel", str, "ddp", "under torchrun: ddp replicates the model, fsdp "
            "shards it (models too big for one GPU); train.batch_size stays the global batch",
            choices=("ddp", "fsdp")),
    Setting("train.adapter", str, "none", "lora: low-rank adapters (peft) train instead of the "
            "whole model (docs/method.md, \"LoRA\")", choices=("none", "lora"), later=True),
    Setting("train.lora_rank", int, 2, "LoRA's rank", minimum=0, above=True, later=True),
    Setting("train.lora_alpha", float, 1.0, "LoRA's alpha", minimum=0, above=True, later=True),
    Setting("train.lora_dropout", float, 0.0, "LoRA's dropout probability", minimum=0,
            maximum=1, below=True, later=True),
    Setting("train.lora_targets", list[str], [], "the layers LoRA adapts (empty: the model's "
            "own defaults)", later=True),
    # metatest: per-test-task adaptation on the support set, then query scoring
    Setting("metatest.split", str, "test", "which split's tasks are scored (train: "
            "overfitting)", choices=("train", "dev", "test")),
    Setting("metatest.lr", float, 1e-7, "Adam rate of the adaptation to a test task's support "
            "set", minimum=0),
    Setting("metatest.epochs", int, 5, "passes over the support set (0: no adaptation)",
            minimum=0),
    Setting("metatest.batch_size", int, 8, "the adaptation's batch size", minimum=0, above=True),
    Setting("metatest.reset", bool, True, "the trained weights are restored before each task"),
    Setting("metatest.batched", bool, False, "adapt many test tasks at once where both towers "
            "are cached (torch.func; the same updates, an accuracy may differ by rounding)",
            later=True),
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


def _registries() -> dict[str, dict]:
    """Each kind of plug-in's registry (importing them registers the built-in plug-ins)."""
    from mamf import methods, protocols, samplers
    from mamf.models import registry as models

    return {"methods": methods.REGISTRY, "samplers": samplers.REGISTRY,
            "protocols": protocols.REGISTRY, "models": models.DECLARED}


def plugin_settings() -> dict[str, list[Setting]]:
    """Each kind of plug-in's declared settings, in registration order."""
    from mamf import methods, protocols, samplers
    from mamf.models import registry as models

    return {"methods": methods.settings(), "samplers": samplers.settings(),
            "protocols": protocols.settings(), "models": models.settings()}


# per state of the registries: the declared settings and the sections' classes built from them
_MADE: dict[tuple, tuple[dict[str, Setting], dict[str, type]]] = {}


def _made() -> tuple[dict[str, Setting], dict[str, type]]:
    """Made once for each state of the registries: a plug-in registered later (as in a test)
    gets sections of its own."""
    state = tuple(tuple(r.items()) for r in _registries().values())
    if state not in _MADE:
        settings = _order(plugin_settings())
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


def _coerce(key: str, value, annotation):
    """Check (and gently convert strings from the command line) against a field's type."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in args:
            return None
        if int in args and str in args:  # a count or a word ("all"): validate() checks which
            return value if isinstance(value, str) and not _is_integer(value) else \
                _coerce(key, value, int)
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):  # from the command line: YAML `[a, b]` or a comma list `a,b`
            value = (parse_yaml(value, f"config {key}") if value.lstrip().startswith("[")
                     else [v for v in value.split(",") if v.strip()])
        if not isinstance(value, list):
            raise MamfError(f"config {key} must be a list, got {shown(value)}")
        (inner,) = typing.get_args(hint)
        return [_coerce(key, v, inner) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no",
                                                        "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise MamfError(f"config {key} must be true or false, got {shown(value)}")
    if hint is int:
        if isinstance(value, bool):
            raise MamfError(f"config {key} must be an integer, got {shown(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise MamfError(f"config {key} must be an integer, got {shown(value)}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            raise MamfError(f"config {key} must be a finite number, got {shown(value)}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        # a bare number, e.g. a subdataset named 2020; never a list or mapping (str() of one
        # built from YAML aliases can take forever), nor an integer too long to print
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (isinstance(value, float) or value.bit_length() < 256):
            return str(value)
        raise MamfError(f"config {key} must be a string, got {shown(value)}")
    raise MamfError(f"config {key}: unsupported value {shown(value)}")


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def set_value(config: Config, dotted: str, value) -> None:
    """Set `section.key` (or a top-level key) with type checking; a section's name takes a
    mapping of its keys."""
    settings = declared()
    if dotted in SECTIONS:
        if isinstance(value, str):  # from the command line: `{lr: 1e-5, steps: 10}`
            value = parse_yaml(value, f"config {dotted}")
        if not isinstance(value, dict):
            raise MamfError(f"config {dotted} must be a mapping of its keys")
        for k, v in value.items():
            set_value(config, f"{dotted}.{_key_name(k)}", v)
        return
    if dotted not in settings:
        raise MamfError(_unknown(dotted, settings))
    setting = settings[dotted]
    target = getattr(config, setting.section) if setting.section else config
    setattr(target, setting.name, _coerce(dotted, value, setting.type))


def _unknown(dotted: str, settings: dict[str, Setting]) -> str:
    """Why `dotted` names no setting: which part is unknown (and the known names there), or
    which setting it treats as a section."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        prefix, head = ".".join(parts[:i - 1]), ".".join(parts[:i])
        if head in settings:
            return f"config {head} is not a section"
        if head not in SECTIONS:
            below = f"{prefix}." if prefix else ""
            known = sorted({k[len(below):].split(".")[0] for k in settings if k.startswith(below)}
                           | (set() if prefix else set(SECTIONS)))
            where = f" in section {prefix!r}" if prefix else ""
            return f"unknown config key {shown(dotted)}{where} (known: {', '.join(known)})"
    return f"config {dotted} is not a setting"


def _key_name(key) -> str:
    if not isinstance(key, str):
        raise MamfError(f"config key {shown(key)} must be a name")
    return key


def value_of(config: Config, key: str):
    """The value of dotted `key` in `config`."""
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def validate(config: Config) -> Config:
    """Every value against its declaration (range, choices), then the rules between settings."""
    for key, setting in declared().items():
        setting.check(value_of(config, key))
    for key in SEEDS:
        check_seed(f"config {key}", value_of(config, key))
    if config.precision == "fp16":
        from mamf.device import FP16_REFUSED

        raise MamfError(FP16_REFUSED)
    if (config.data.support_match is None) != (config.data.query_match is None):
        raise MamfError("config data.support_match and data.query_match go together")
    image_blocks, text_layers = unfrozen(config.train)
    if config.train.heads == "random" and text_layers == 0:
        raise MamfError("train.heads=random cannot go with train.freeze_text_tower: the cached "
                        "text embeddings would pass through an untrained head")
    if image_blocks not in (0, None) and (config.train.augment or config.metatest.augment):
        which = "train.augment" if config.train.augment else "metatest.augment"
        raise MamfError(f"{which}=true cannot go with train.unfreeze_image_blocks="
                        f"{image_blocks}: augmentation acts on pixels and the frozen blocks' "
                        f"outputs are cached; set {which}=false")
    if config.train.adapter != "none" and config.train.parallel == "fsdp":
        raise MamfError("train.adapter=lora cannot go with train.parallel=fsdp: adapters train "
                        "few enough values for ddp")
    if not all(0 <= a <= 1 for a in config.metatest.interpolate):
        raise MamfError(f"config metatest.interpolate holds weights of the trained model, each "
                        f"in [0, 1]; got {shown(config.metatest.interpolate)}")
    if len(set(config.metatest.interpolate)) != len(config.metatest.interpolate):
        raise MamfError("config metatest.interpolate lists an alpha twice")
    if not all(t.strip() for t in config.train.lora_targets):
        raise MamfError("config train.lora_targets must hold layer names, not empty strings")
    if config.train.steps is not None and config.train.steps_per_shot is not None:
        raise MamfError("config train.steps and train.steps_per_shot both set the step count: "
                        "set one of them")
    return config


UNFREEZE = {"unfreeze_image_blocks": "freeze_image_backbone",
            "unfreeze_text_layers": "freeze_text_tower"}


def unfrozen(train: Section) -> tuple[int | None, int | None]:
    """How many top blocks of the image tower and top layers of the text tower train: k >= 0
    (0: the tower is frozen), None: all of it (end to end). An unset `unfreeze_*` key follows its
    `freeze_*` key; the two may not disagree. The counts are checked against the model in
    `mamf.inputs`, which knows its towers."""
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


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise MamfError(f"config file {path} is a directory, not a YAML file")
    if not path.is_file():
        raise MamfError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MamfError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise MamfError(f"cannot read config file {path}: {e.strerror or e}") from None
    data = parse_yaml(text, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MamfError(f"config file {path} must hold a mapping of keys")
    return data


def deep_merge(a: dict, b: dict | None) -> dict:
    """`a` updated by `b`, section by section: nested mappings merge, anything else replaces."""
    out = dict(a)
    for k, v in (b or {}).items():
        both = isinstance(v, dict) and isinstance(out.get(k), dict)
        out[k] = deep_merge(out[k], v) if both else v
    return out


def parse_yaml(text: str, what: str):
    """`safe_load` (no tags that build objects), every failure one line: bad syntax, nesting past
    the parser's stack, or deeper than any config needs."""
    too_deep = f"{what} nests more than {MAX_DEPTH} levels deep"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise MamfError(f"{what} is not valid YAML: {first}") from None
    except RecursionError:
        raise MamfError(too_deep) from None
    if _height(data, {}, 0) is None:
        raise MamfError(too_deep)
    return data


def _height(value, heights: dict, depth: int) -> int | None:
    """Levels of lists and mappings in `value`, or None past MAX_DEPTH (a self-containing
    alias included); each shared node is measured once, so aliases cost nothing extra."""
    if not isinstance(value, (list, dict)):
        return 0
    height = heights.get(id(value))
    if height is None:
        if depth >= MAX_DEPTH:
            return None
        height = 0
        for child in value.values() if isinstance(value, dict) else value:
            below = _height(child, heights, depth + 1)
            if below is None:
                return None
            height = max(height, below + 1)
        heights[id(value)] = height
    return height if depth + height <= MAX_DEPTH else None


def build_config(base: dict | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then a (YAML) mapping, then dotted overrides; validated."""
    config = Config()
    for key, value in (base or {}).items():
        set_value(config, _key_name(key), value)
    for key, value in (overrides or {}).items():
        set_value(config, key, value)
    return validate(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
