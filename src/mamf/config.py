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

from mamf.errors import MamfError


@dataclass
class DataConfig:
    """Which images, which prompts, which protocol and task shape."""

    root: str = ""
    subdataset: str | None = None
    template: str = "A photo of a {label}."
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
    weight_decay: float = 0.0
    checkpoint_every: int = 100
    # under torchrun: batch_size stays the global batch; ddp replicates the model on every rank,
    # fsdp shards parameters, gradients and optimiser state (models too big for one GPU)
    parallel: str = "ddp"


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


@dataclass
class Config:
    model: str = "effnet-minilm"
    seed: int = 312
    device: str = "auto"
    precision: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metatest: MetaTestConfig = field(default_factory=MetaTestConfig)


CHOICES = {
    "data.protocol": ("paper", "episodic"),
    "train.heads": ("pretrained", "random"),
    "train.schedule": ("sampled", "sequential"),
    "train.candidates": ("task", "batch"),
    "train.parallel": ("ddp", "fsdp"),
    "metatest.split": ("dev", "test"),
    "device": ("auto", "cpu", "cuda") ,
    "precision": ("auto", "fp32", "bf16", "fp16"),
}
POSITIVE = {"data.ways", "data.shots", "data.queries", "data.tasks", "data.start_n",
            "train.lr", "train.epochs", "train.batch_size", "train.steps", "train.inner_epochs",
            "train.meta_batch", "train.inner_batch_size",
            "train.crop_scale", "train.sampler_tau", "metatest.batch_size",
            "metatest.inner_batch_size"}
NON_NEGATIVE = {"train.checkpoint_every", "train.inner_lr", "train.weight_decay",
                "train.sampler_discount", "train.sampler_scale", "metatest.lr",
                "metatest.epochs", "metatest.inner_lr", "metatest.inner_epochs"}


def _coerce(key: str, value, annotation):
    """Check (and gently convert strings from the command line) against a field's type."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise MamfError(f"config {key} must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(key, v, inner) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no",
                                                        "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise MamfError(f"config {key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise MamfError(f"config {key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise MamfError(f"config {key} must be an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or not math.isfinite(number):
            raise MamfError(f"config {key} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise MamfError(f"config {key} must be a string, got {value!r}")
    raise MamfError(f"config {key}: unsupported value {value!r}")


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
            raise MamfError(f"unknown config key {dotted!r}{where} (known: {known})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(target, part)):
                if not isinstance(value, dict):
                    raise MamfError(f"config {dotted} must be a mapping of its keys")
                for k, v in value.items():
                    set_value(config, f"{dotted}.{k}", v)
                return
            setattr(target, part, _coerce(dotted, value, hints[part]))
            return
        target = getattr(target, part)
        if not dataclasses.is_dataclass(target):
            raise MamfError(f"config {'.'.join(parts[:i + 1])} is not a section")


def registry_choices() -> dict[str, tuple[str, ...]]:
    """Choices that plug-ins add to: trained methods and task samplers (imported when needed)."""
    from mamf import methods, samplers

    return {"train.method": methods.names(trained=True), "train.sampler": samplers.names()}


def validate(config: Config) -> Config:
    flat = to_dict(config)
    for key, choices in {**CHOICES, **registry_choices()}.items():
        value = _get(flat, key)
        if value not in choices:
            raise MamfError(f"config {key} must be one of {', '.join(choices)}; got {value!r}")
    for key in POSITIVE:
        value = _get(flat, key)
        if value is not None and value <= 0:
            raise MamfError(f"config {key} must be positive, got {value!r}")
    for key in NON_NEGATIVE:
        if _get(flat, key) < 0:
            raise MamfError(f"config {key} must not be negative, got {_get(flat, key)!r}")
    if (config.data.support_match is None) != (config.data.query_match is None):
        raise MamfError("config data.support_match and data.query_match go together")
    if config.train.heads == "random" and config.train.freeze_text_tower:
        raise MamfError("train.heads=random cannot go with train.freeze_text_tower: the cached "
                        "text embeddings would pass through an untrained head")
    if config.train.sampler_discount > 1:
        raise MamfError("config train.sampler_discount is the share of a potential kept, at most 1")
    if config.train.crop_scale > 1:
        raise MamfError("config train.crop_scale is the smallest crop area fraction, at most 1")
    if config.data.start_n < 2:
        raise MamfError("config data.start_n must be at least 2")
    return config


def _get(flat: dict, dotted: str):
    for part in dotted.split("."):
        flat = flat[part]
    return flat


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MamfError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise MamfError(f"config file {path} is not valid YAML: {first}") from None
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


def build_config(base: dict | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then a (YAML) mapping, then dotted overrides; validated."""
    config = Config()
    for key, value in (base or {}).items():
        set_value(config, str(key), value)
    for key, value in (overrides or {}).items():
        set_value(config, key, value)
    return validate(config)


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
