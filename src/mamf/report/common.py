"""What every report section shares: how a method is named and coloured, its table order, and
text that is safe inside a markdown table."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from mamf.methods import presentation


def label(method: str) -> str:
    """How tables name a method: its registered label, else its name as rows spell it; a trained
    run scored by a baseline (`mamf+tip-adapter`) reads `MAMF + Tip-Adapter`."""
    shown = presentation.of(method)
    if shown is None and "+" in method:
        return " + ".join(label(part) for part in method.split("+"))
    return shown.label if shown else method


def colour(method: str) -> str:
    shown = presentation.of(method)
    return shown.colour if shown else "#7f7f7f"


def method_order() -> list[str]:
    """Methods with a record (`mamf.methods.presentation`), in table order."""
    return presentation.ordered()


def in_order(present: Iterable[str]) -> list[str]:
    """The methods in `present` in table order; any not registered here come last, by name."""
    present = set(present)
    order = method_order()
    return [m for m in order if m in present] + sorted(m for m in present if m not in order)


def rank(method: str) -> tuple:
    order = method_order()
    return (order.index(method), "") if method in order else (len(order), method)


def labels(methods: Sequence[str]) -> str:
    """`A`, `A and B`, `A, B and C`."""
    names = [label(m) for m in methods]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def numbers(values: Iterable) -> str:
    return ",".join(map(str, sorted(set(values))))


def md(text: object) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


SAFE_NAME_CHARS = 80  # a file name holds 255 bytes; a figure's adds a prefix and a suffix


def safe_name(name: str) -> str:
    """A dataset's name as part of a figure's file name: ASCII letters, digits, - and _ (one
    byte each); a long name is cut, with a short hash of the whole so two stay apart."""
    safe = "".join(c if c.isascii() and c.isalnum() or c in "-_" else "_" for c in name)
    if len(safe) <= SAFE_NAME_CHARS:
        return safe
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{safe[:SAFE_NAME_CHARS - 13]}-{digest}"


def holm_line(count: int, holds: str = "the difference is above 0",
              fails: str = "when below") -> str:
    """The one line a table of several comparisons carries under it; `holds` and `fails` say
    what the verdicts mean where *holds* is not "above 0"."""
    if count < 2:
        return (f"Verdict: *holds* when {holds} at the 5 % level (its 95 % interval excludes 0 "
                f"on that side), *does not hold* {fails}, else *inconclusive*.")
    return (f"Verdicts are Holm-adjusted over the {count} comparisons of this table (family-wise "
            f"error 5 %): *holds* when {holds}, *does not hold* {fails}, "
            "*inconclusive* otherwise; the intervals shown are unadjusted 95 % intervals.")
