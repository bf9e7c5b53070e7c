"""Configuration: one dataclass per concern, loadable from YAML, overridable from the command line.

Every key is checked: an unknown key or a value of the wrong type is one clear error, and YAML is
read with `safe_load`, so a config file can never import or execute anything.
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


@dataclass
class DataConfig:
    """Which images, which prompts, which protocol and task shape."""

    root: str = ""
    subdataset: str | None = None
    template: str = "A photo of a {label}."
    # a prompt ensemble instead of `template`: templates with {label} (or {}), or one set's name
    # (imagenet: CLIP's 80 ImageNet templates); class embedding = mean of the normalised ones
    templates: list[str] | None = None
    protocol: str = "paper"
    ways: int = 5
    start_n: int = 2
    shots: int = 1
    queries: int = 15
    tasks: int = 600
    class_split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 0
    support_match: str | None = None
    query_match: str | None = None
    # coop and base2novel: a CoOp split file (split_zhou_<Dataset>.json); else 60/20/20 per class
    split_file: str | None = None
    # training uses only images whose file name contains this (e.g. one emoji vendor's set)
    train_match: str | None = None


@dataclass
class TrainConfig:
    """How a method fine-tunes on the training pool (defaults: docs/method.md, "Defaults")."""

    method: str = "mamf"
    sampler: str = "uniform"  # which classes a training task gets (methods that draw tasks)
    # similar, diverse, curriculum: temperature on prompt cosine similarities (smaller: sharper)
    sampler_tau: float = 0.1
    # confusion: how much of a class pair's old potential is kept at each update (0..1) and how
    # strongly a step's confusion raises it (docs/method.md, "Task samplers")
    sampler_discount: float = 0.5
    sampler_scale: float = 1.0
    lr: float = 1e-6
    epochs: float = 8.0
    batch_size: int = 32
    steps: int | None = None
    # matched: every method gets classical fine-tuning's updates and images per update; native:
    # each method's own schedule (docs/method.md, "Budgets"). Experiments default to matched.
    budget: str = "native"
    heads: str = "pretrained"
    schedule: str = "sampled"
    candidates: str = "task"
    inner_lr: float = 1e-7
    inner_epochs: int = 1
    meta_batch: int = 1
    inner_batch_size: int = 8
    augment: bool = True
    crop_scale: float = 0.8
    freeze_image_backbone: bool = False
    freeze_text_tower: bool = False
    # the last k blocks (layers) of a tower train, the ones below are frozen and their outputs
    # cached: an integer >= 0 (0: frozen) or "all" (end to end); unset: the freeze_* key decides
    unfreeze_image_blocks: int | str | None = None
    unfreeze_text_layers: int | str | None = None
    weight_decay: float = 0.0
    # the learning rate over the steps: constant, or cosine decay from `lr` to 0 at the last step
    lr_schedule: str = "constant"
    # steps = this x data.shots when set (CLIP-LoRA's "500 x shots iterations"); not with `steps`
    steps_per_shot: int | None = None
    checkpoint_every: int = 100
    # TensorBoard scalars (loss, lr, images/s) go here when set (`--tensorboard DIR`); a CSV of
    # the same is always the run folder's train_log.csv. Not a setting of the measurement.
    log_dir: str | None = None
    # every this many steps, the dev split's tasks are scored (no test-time adaptation) into the
    # log's dev_acc; unset: never. Like log_dir, not a setting of the measurement
    eval_every: int | None = None
    # under torchrun: batch_size stays the global batch; ddp replicates the model on every rank,
    # fsdp shards parameters, gradients and optimiser state (models too big for one GPU)
    parallel: str = "ddp"
    # low-rank adapters (peft's LoRA) instead of full fine-tuning: only the adapters, the logit
    # scale and (with heads=random) the fresh heads train; lora_targets empty = the model's own
    # defaults (docs/method.md, "LoRA")
    adapter: str = "none"
    lora_rank: int = 2
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)


@dataclass
class MetaTestConfig:
    """Per-test-task adaptation on the support set, then query scoring."""

    split: str = "test"
    lr: float = 1e-7
    epochs: int = 5
    batch_size: int = 8
    reset: bool = True
    augment: bool = False
    # FOMAML adapts to a test task as its inner loop does: plain SGD with these settings
    inner_lr: float = 1e-7
    inner_epochs: int = 1
    inner_batch_size: int = 8
    # WiSE-FT: score (1 - alpha) * zero-shot + alpha * trained weights, one row per alpha;
    # empty: the trained weights as they are (rows carry alpha null)
    interpolate: list[float] = field(default_factory=list)
    # keep each test task's predictions in its row (`predictions`: a few bytes per query image;
    # the report's per-class accuracy and confusion matrix read them). Not a setting of the
    # measurement
    save_predictions: bool = False


@dataclass
class BaselineConfig:
    """The test-time baselines' settings (docs/method.md, "Baselines")."""

    # linear-probe: full-batch Adam steps on the support set, from the class prompts' embeddings
    probe_steps: int = 100
    probe_lr: float = 1e-3
    probe_weight_decay: float = 0.0
    # prototype: weight of the support mean against the prompt embedding (1: nearest mean only)
    prototype_mix: float = 0.5
    # tip-adapter(-f): the alpha x beta grid searched on dev-split tasks (never test ones)
    tip_alphas: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0, 3.0])
    tip_betas: list[float] = field(default_factory=lambda: [1.0, 3.0, 5.0, 7.0])
    # tip-adapter-f: fine-tuning of the cache keys on the support set (the paper's defaults)
    tip_f_epochs: int = 20
    tip_f_lr: float = 1e-3
    tip_f_alpha: float = 1.0
    tip_f_beta: float = 1.0
    # gda: the weight of the Gaussian discriminant's logits, chosen on dev tasks from this grid
    gda_alphas: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0,
                                                             100.0])
    # lp++: full-batch epochs (the blend's step every `lpp_alpha_every` of them), no validation
    lpp_epochs: int = 300
    lpp_alpha_every: int = 10
    # clap / zs-lp: SGD (momentum 0.9) with cosine decay over full-batch epochs, no validation
    clap_epochs: int = 300
    clap_lr: float = 0.1
    # taskres: Adam with cosine decay on a residual scaled by `taskres_scale`, no validation
    taskres_epochs: int = 200
    taskres_lr: float = 2e-3
    taskres_scale: float = 0.5
    # prolip: full-batch Adam with cosine decay on the image projection; lambda = 1 / shots
    prolip_epochs: int = 300
    prolip_lr: float = 1e-3
    # ape: the share of channels kept, the criterion's weights, and the dev-task grids
    ape_channels: float = 0.8
    ape_weights: list[float] = field(default_factory=lambda: [0.5, 0.5])
    ape_alphas: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0, 2.0, 4.0, 7.0])
    ape_betas: list[float] = field(default_factory=lambda: [0.1, 1.0, 2.0, 3.5, 5.0, 7.0])
    ape_gammas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.25, 0.5, 0.75])
    # coop / cocoop: the learned context in front of the class name, trained by SGD (momentum
    # 0.9, weight decay 5e-4) at this rate over train.steps / train.epochs; `*_init` words
    # start it (their token count is M), "" draws M = `coop_context` vectors from N(0, 0.02);
    # `coop_class_specific`: one context per class (CoOp's CSC) instead of one shared
    coop_context: int = 16
    coop_init: str = "a photo of a"
    coop_class_specific: bool = False
    coop_lr: float = 2e-3
    cocoop_init: str = "a photo of a"
    cocoop_lr: float = 2e-3


@dataclass
class Config:
    model: str = "effnet-minilm"
    seed: int = 312
    device: str = "auto"
    precision: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metatest: MetaTestConfig = field(default_factory=MetaTestConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)


CHOICES = {
    "train.heads": ("pretrained", "random"),
    "train.schedule": ("sampled", "sequential"),
    "train.budget": ("matched", "native"),
    "train.candidates": ("task", "batch"),
    "train.parallel": ("ddp", "fsdp"),
    "metatest.split": ("train", "dev", "test"),
    "train.adapter": ("none", "lora"),
    "train.lr_schedule": ("constant", "cosine"),
    "device": ("auto", "cpu", "cuda") ,
    "precision": ("auto", "fp32", "bf16", "fp16"),
}
POSITIVE = {"data.ways", "data.shots", "data.queries", "data.tasks", "data.start_n",
            "train.lr", "train.epochs", "train.batch_size", "train.steps", "train.steps_per_shot",
            "train.inner_epochs", "train.meta_batch", "train.inner_batch_size", "train.eval_every",
            "train.lora_rank", "train.lora_alpha", "train.crop_scale", "train.sampler_tau",
            "metatest.batch_size", "baseline.coop_context", "baseline.coop_lr", "baseline.cocoop_lr",
            "metatest.inner_batch_size"}
SEEDS = ("seed", "data.split_seed")
# numpy's SeedSequence takes any n >= 0 and torch.manual_seed any n < 2**64: the signed 64-bit
# range's top keeps a seed valid for both and for any tool that stores it as an int64
MAX_SEED = 2**63 - 1
NON_NEGATIVE = {"train.checkpoint_every", "train.inner_lr", "train.weight_decay",
                "train.sampler_discount", "train.sampler_scale", "metatest.lr",
                "metatest.epochs", "metatest.inner_lr", "metatest.inner_epochs",
                "baseline.probe_steps", "baseline.probe_lr", "baseline.probe_weight_decay",
                "baseline.prototype_mix", "baseline.tip_f_epochs", "baseline.tip_f_lr",
                "baseline.tip_f_alpha", "baseline.tip_f_beta",
                "train.lora_dropout"}
# counts of classes and images per task: anything larger is a typo, and is refused before it
# reaches a loop or a message
AT_MOST = {"data.ways": 10**6, "data.start_n": 10**6, "data.shots": 10**6, "data.queries": 10**6,
           "data.tasks": 10**7}
# config and experiment files nest a handful of levels; anything far deeper is a mistake or an attack
MAX_DEPTH = 32


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


def _hints(obj) -> dict:
    return typing.get_type_hints(type(obj))


def set_value(config: Config, dotted: str, value) -> None:
    """Set `section.key` (or a top-level key) with type checking."""
    parts = dotted.split(".")
    target = config
    for i, part in enumerate(parts):
        hints = _hints(target)
        if part not in hints:
            prefix = ".".join(parts[:i])
            known = ", ".join(sorted(hints))
            where = f" in section {prefix!r}" if prefix else ""
            raise MamfError(f"unknown config key {shown(dotted)}{where} (known: {known})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(target, part)):
                if isinstance(value, str):  # from the command line: `{lr: 1e-5, steps: 10}`
                    value = parse_yaml(value, f"config {dotted}")
                if not isinstance(value, dict):
                    raise MamfError(f"config {dotted} must be a mapping of its keys")
                for k, v in value.items():
                    set_value(config, f"{dotted}.{_key_name(k)}", v)
                return
            setattr(target, part, _coerce(dotted, value, hints[part]))
            return
        target = getattr(target, part)
        if not dataclasses.is_dataclass(target):
            raise MamfError(f"config {'.'.join(parts[:i + 1])} is not a section")


def registry_choices() -> dict[str, tuple[str, ...]]:
    """Choices that plug-ins add to: protocols, trained methods and task samplers (imported when
    needed)."""
    from mamf import methods, protocols, samplers

    return {"data.protocol": protocols.names(), "train.method": methods.names(trained=True),
            "train.sampler": samplers.names()}


def _key_name(key) -> str:
    if not isinstance(key, str):
        raise MamfError(f"config key {shown(key)} must be a name")
    return key


def validate(config: Config) -> Config:
    flat = to_dict(config)
    for key, choices in {**CHOICES, **registry_choices()}.items():
        value = _get(flat, key)
        if value not in choices:
            raise MamfError(f"config {key} must be one of {', '.join(choices)}; got {shown(value)}")
    for key in POSITIVE:
        value = _get(flat, key)
        if value is not None and value <= 0:
            raise MamfError(f"config {key} must be positive, got {shown(value)}")
    for key in SEEDS:
        check_seed(f"config {key}", _get(flat, key))
    for key, top in AT_MOST.items():
        if _get(flat, key) > top:
            raise MamfError(f"config {key} must be at most {top}, got {shown(_get(flat, key))}")
    for key in NON_NEGATIVE:
        if _get(flat, key) < 0:
            raise MamfError(f"config {key} must not be negative, got {shown(_get(flat, key))}")
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
    if config.train.sampler_discount > 1:
        raise MamfError("config train.sampler_discount is the share of a potential kept, at most 1")
    if config.train.crop_scale > 1:
        raise MamfError("config train.crop_scale is the smallest crop area fraction, at most 1")
    if config.baseline.prototype_mix > 1:
        raise MamfError("config baseline.prototype_mix is the support mean's weight, at most 1")
    b = config.baseline
    if not b.tip_alphas or not b.tip_betas or min(b.tip_alphas + b.tip_betas) < 0:
        raise MamfError("config baseline.tip_alphas and tip_betas must be non-empty lists of "
                        "numbers >= 0")
    if config.train.adapter != "none" and config.train.parallel == "fsdp":
        raise MamfError("train.adapter=lora cannot go with train.parallel=fsdp: adapters train "
                        "few enough values for ddp")
    if config.train.lora_dropout >= 1:
        raise MamfError("config train.lora_dropout is a dropout probability, below 1")
    if not all(0 <= a <= 1 for a in config.metatest.interpolate):
        raise MamfError(f"config metatest.interpolate holds weights of the trained model, each "
                        f"in [0, 1]; got {shown(config.metatest.interpolate)}")
    if len(set(config.metatest.interpolate)) != len(config.metatest.interpolate):
        raise MamfError("config metatest.interpolate lists an alpha twice")
    if config.data.train_match == "":
        raise MamfError("config data.train_match must not be empty (it would match every file)")
    if not all(t.strip() for t in config.train.lora_targets):
        raise MamfError("config train.lora_targets must hold layer names, not empty strings")
    if config.train.steps is not None and config.train.steps_per_shot is not None:
        raise MamfError("config train.steps and train.steps_per_shot both set the step count: "
                        "set one of them")
    if config.data.start_n < 2:
        raise MamfError("config data.start_n must be at least 2")
    return config


UNFREEZE = {"unfreeze_image_blocks": "freeze_image_backbone",
            "unfreeze_text_layers": "freeze_text_tower"}


def unfrozen(train: TrainConfig) -> tuple[int | None, int | None]:
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


def _get(flat: dict, dotted: str):
    for part in dotted.split("."):
        flat = flat[part]
    return flat


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
