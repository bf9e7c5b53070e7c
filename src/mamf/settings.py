"""A setting, declared where it is read: its dotted key, type, default, range and one line of help.

The core settings (the model, the data, training, the meta-test) are declared in
`mamf.catalogue`; a plug-in (a method, a task sampler, a protocol, a model family) carries its own
as `settings = (Setting(...), ...)`. The catalogue builds the config's sections from all of them,
`mamf.config` checks every value against its declaration, and `mamf methods` lists them, so adding
a method with a setting is one file. This module imports nothing heavy: the command line's parser reads
the core declarations for its flags' help.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
