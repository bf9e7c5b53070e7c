"""One exception type for mistakes a user can make: the CLI prints it as one line, no traceback."""

from __future__ import annotations

import math
import reprlib


class MamfError(Exception):
    """A problem with the user's input (data, config, model name) rather than a bug in mamf."""


class Diverged(MamfError):
    """A loss became NaN or infinite: the rate is too high for this model and data. A run stops
    with it; tuning records the grid point as diverged and goes on (`mamf.runs.tune`)."""


class _ShortRepr(reprlib.Repr):
    """reprlib with small caps, and huge integers shown by size (repr of one raises past 4300
    digits); it never walks more than a few elements of a container, however YAML aliases nest."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 2, 3, 3, 3, 3
        self.maxstring, self.maxother, self.maxlong = 60, 60, 24

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            digits = int((x.bit_length() - 1) * math.log10(2)) + 1  # or one more:
            digits += abs(x) >= 10**digits
            return f"<an integer of {digits} digits>"
        return super().repr_int(x, level)


_SHORT = _ShortRepr()
LIMIT = 100


def shown(value: object) -> str:
    """`repr(value)` for an error message, cut short: user values may be huge or deeply shared."""
    text = _SHORT.repr(value)
    return text if len(text) <= LIMIT else text[:LIMIT - 3] + "..."


def is_int(value: object) -> bool:
    """An integer as a user's file means one: YAML's and JSON's `true` is a bool, not a count."""
    return isinstance(value, int) and not isinstance(value, bool)
