"""Dataset builders: turn data that can be had offline into image folders in the standard layout.

Each builder is `build_X(out, *, log=print, **options) -> Path` and writes `<out>/<label>/<image>`,
`label_to_text.json`, `DATASET.md` (source, licence, counts, rebuild command) and, last, a
`.mamf-dataset.json` manifest that makes a second call with the same options return at once.

    from mamf.data.builders import BUILDERS, build
    root = build("counting", "data/counting", per_class=60, seed=0)

From the shell: `python -m mamf.data.builders counting data/counting per_class=60 seed=0`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mamf.data.builders.counting import build_counting
from mamf.data.builders.digits import build_digits
from mamf.data.builders.emoji import build_emoji
from mamf.data.builders.emoji_levels import build_emoji_levels
from mamf.data.builders.fashion_mnist import build_fashion_mnist
from mamf.data.builders.spurious import build_spurious
from mamf.system.errors import MamfError

BUILDERS: dict[str, Callable[..., Path]] = {
    "emoji": build_emoji,
    "emoji-levels": build_emoji_levels,
    "counting": build_counting,
    "fashion-mnist": build_fashion_mnist,
    "digits": build_digits,
    "spurious": build_spurious,
}


def builder_options(name: str) -> dict[str, Any]:
    """The options a builder takes, with their defaults."""
    fn = _get(name)
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "log"}


def _get(name: str) -> Callable[..., Path]:
    try:
        return BUILDERS[name]
    except KeyError:
        raise MamfError(f"no dataset builder {name!r}; choose one of {', '.join(BUILDERS)}") from None


def build(name: str, out: str | os.PathLike, *, log: Callable[[str], None] = print,
          **options: Any) -> Path:
    """Run builder `name` into `out`; unknown options are a MamfError, not a TypeError."""
    known = builder_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise MamfError(f"builder {name!r} has no option {unknown[0]!r}; "
                        f"options: {', '.join(known) or 'none'}")
    return _get(name)(out, log=log, **options)


__all__ = ["BUILDERS", "build", "builder_options", "build_counting", "build_digits", "build_emoji",
           "build_emoji_levels", "build_fashion_mnist", "build_spurious"]
