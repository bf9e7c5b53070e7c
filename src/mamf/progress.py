"""Progress bars that still speak when stderr is not a terminal.

On a terminal: tqdm's bar, redrawn in place. Elsewhere (a log file, CI, a pipe) tqdm would stay
silent; here its status line is written as a plain `mamf: ...` line at most every 30 s instead, so
a long stretch (a cache build, training, a meta-test) never goes quiet for much longer than that.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable

LINE_EVERY_S = 30.0
_quiet = False  # the command line's --quiet: no bar anywhere in the process
_CURSOR = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's moves between nested bars


class _Lines:
    """A file for tqdm: each redraw becomes one plain line; erasures and cursor moves are dropped."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        for line in _CURSOR.sub("", text).replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(f"mamf: {line.strip()}\n")

    def flush(self) -> None:
        self.stream.flush()


def set_quiet(quiet: bool) -> None:
    """`--quiet`: silence every bar of this process, including those deep in a cache build that
    no caller passes a flag to."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """Whether bars are silenced process-wide (`set_quiet`)."""
    return _quiet


def bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs):
    """A tqdm bar over `iterable`; `enabled=False` (or `set_quiet`) shows nothing."""
    from tqdm import tqdm

    if not enabled or _quiet:
        return tqdm(iterable, disable=True, **kwargs)
    stream = sys.stderr
    if stream.isatty():
        return tqdm(iterable, file=stream, **kwargs)
    return tqdm(iterable, file=_Lines(stream), mininterval=LINE_EVERY_S, miniters=1, ascii=True,
                **kwargs)
