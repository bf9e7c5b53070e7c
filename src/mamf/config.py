"""Configuration: a `Config` made from defaults, YAML and the command line, every value checked.

What settings exist is the catalogue's (`mamf.catalogue`: the core's and every plug-in's
declarations, and the `Config` built from them); this module reads values into a Config. Every
key is checked: an unknown key, a value of the wrong type or out of its declared range is one
clear error, and YAML is read with `safe_load`, so a config file can never import or execute
anything. The plug-ins must have joined the catalogue first (`import mamf.plugins`, as every
entry point does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from pathlib import Path

import yaml

from mamf.catalogue import (
    SECTIONS,
    SEEDS,
    Config,
    Setting,
    check_seed,
    declared,
    names_of,
    plugin,
    unfrozen,
    value_of,
)
from mamf.system.errors import MamfError, shown

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


def validate(config: Config) -> Config:
    """Every value against its declaration (range, choices), then the rules between settings."""
    for key, setting in declared().items():
        setting.check(value_of(config, key))
    for key in SEEDS:
        check_seed(f"config {key}", value_of(config, key))
    if config.precision == "fp16":
        from mamf.system.device import FP16_REFUSED

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
    if config.train.adapter != "none":
        kind = plugin("methods", config.train.method)
        # only a TrainedMethod has `trains_adapters` (config.py imports no plug-in to ask it)
        if not getattr(kind, "trains_adapters", True):
            raise MamfError(f"train.adapter={config.train.adapter} cannot go with "
                            f"train.method={config.train.method}: it trains only what it adds "
                            "to the model, so the adapters would never train")
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
    if config.train.steps_per_shot is not None and \
            not plugin("protocols", config.data.protocol).trains_on_shots:
        fit = ", ".join(p for p in names_of("protocols") if plugin("protocols", p).trains_on_shots)
        raise MamfError(f"config train.steps_per_shot (the clip-lora preset's k x shots "
                        f"steps) needs a protocol that trains on data.shots images a class "
                        f"({fit}); under {config.data.protocol} set train.steps instead")
    return config


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
