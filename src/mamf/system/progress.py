"""Progress a person and a log can read.

On a terminal: tqdm's bar, redrawn in place. Elsewhere (a log file, CI, a pipe) a bar redrawn in
place leaves only its first `0%` frame in a file, so there each stage writes plain, timestamped
lines instead: one when it starts, one at least every 30 s while it runs, and one when it ends
with its count and duration. Nothing is written for a stage that never starts.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Hashable, Iterable, Iterator

LINE_EVERY_S = 30.0
_quiet = False  # the command line's --quiet: no bar anywhere in the process
_clock = time.monotonic  # durations (tests replace it)


def stamp() -> str:
    """The wall-clock time every line off a terminal starts with."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def seconds(s: float) -> str:
    """One duration format everywhere: 42.0 s, 3.5 min, 1.2 h."""
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class LogBar:
    """A bar for a log file: tqdm's calls (iterate, update, set_postfix, close), written as lines."""

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 unit: str = "it", stream=None, **_ignored) -> None:
        self.iterable, self.desc, self.unit = iterable, desc or "working", unit
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.postfix = total, 0, ""
        self.stream = stream or sys.stderr
        self.started = self.last = None  # written at the first unit of work, not before
        self.created = _clock()  # an update-driven stage's work began when it was made
        self.closed = False

    def _write(self, text: str) -> None:
        self.stream.write(f"mamf: {stamp()} {self.desc}: {text}\n")
        self.stream.flush()

    def _start(self, since: float | None = None) -> None:
        if self.started is None:
            self.started = self.last = _clock() if since is None else since
            of = f"{self.total} {self.unit}" if self.total is not None else "open-ended"
            self._write(f"started ({of})")

    def _status(self) -> str:
        elapsed = _clock() - (self.started or _clock())
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        parts = [f"{done} {self.unit}", seconds(elapsed)]
        if self.total and self.n and elapsed > 0:
            parts.append(f"about {seconds(elapsed / self.n * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self._start(self.created if self.iterable is None else None)
        self.n += n
        now = _clock()
        if now - self.last >= LINE_EVERY_S and not (self.total is not None and self.n >= self.total):
            self.last = now
            self._write(self._status())

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                self._start()
                yield item
                self.update(1)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed or self.started is None:
            self.closed = True
            return
        self.closed = True
        extra = f", {self.postfix}" if self.postfix else ""
        self._write(f"done, {self.n} {self.unit} in {seconds(_clock() - self.started)}{extra}")

    def __enter__(self) -> LogBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def set_quiet(quiet: bool) -> None:
    """`--quiet`: silence every bar of this process, including those deep in a cache build that
    no caller passes a flag to."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    """Whether bars are silenced process-wide (`set_quiet`)."""
    return _quiet


def bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs):
    """A progress bar over `iterable`: tqdm on a terminal, timestamped lines elsewhere;
    `enabled=False` (or `set_quiet`) shows nothing."""
    from tqdm import tqdm

    if not enabled or _quiet:
        return tqdm(iterable, disable=True, **kwargs)
    stream = sys.stderr
    if stream.isatty():
        return tqdm(iterable, file=stream, **kwargs)
    return LogBar(iterable, stream=stream, **kwargs)


class Eta:
    """The time left of a grid whose kinds of work cost orders of magnitude apart (one method's
    training, another's test tasks): each kind's seconds per unit of work (a training, a test
    task) as measured so far, times that kind's units still to do. Not estimated (None) while a
    kind that is still to do has not been measured once: an average over other kinds' rows is
    what made the ETA several times off. One-off costs (`apart`) are left out; time between the
    measured parts (setting up a row) scales the estimate as it did the work so far."""

    def __init__(self) -> None:
        self.todo: dict[Hashable, float] = {}  # kind -> units still to do
        self.spent: dict[Hashable, list[float]] = {}  # kind -> [seconds, units] measured
        self.started, self.one_off = _clock(), 0.0

    def add_todo(self, kind: Hashable, units: float = 1.0) -> None:
        """`units` more of `kind` still to do."""
        self.todo[kind] = self.todo.get(kind, 0.0) + units

    def done(self, kind: Hashable, seconds: float, units: float = 1.0) -> None:
        """`units` of `kind` finished in `seconds`."""
        spent = self.spent.setdefault(kind, [0.0, 0.0])
        spent[0] += seconds
        spent[1] += units
        self.forget(kind, units)

    def forget(self, kind: Hashable, units: float = 1.0) -> None:
        """Work still to do that will not be done (it failed)."""
        self.todo[kind] = max(0.0, self.todo.get(kind, 0.0) - units)

    @contextlib.contextmanager
    def apart(self):
        """Time the block apart (a cache build); yields a function giving its seconds so far."""
        started = _clock()
        try:
            yield lambda: _clock() - started
        finally:
            self.one_off += _clock() - started

    def seconds_left(self) -> float | None:
        """The whole time left; None while a kind still to do has not been measured."""
        known, untimed = self.known_left()
        return None if untimed else known

    def known_left(self) -> tuple[float | None, int]:
        """The time left of the kinds measured so far (None before any), and how many kinds
        still to do have not been measured once."""
        left = [(kind, units) for kind, units in self.todo.items() if units > 0]
        timed = [(k, units) for k, units in left if k in self.spent and self.spent[k][1] > 0]
        measured = sum(seconds for seconds, _ in self.spent.values())
        if not measured > 0 and not (left and len(timed) == len(left)):
            return None, len(left) - len(timed)
        estimate = sum(self.spent[k][0] / self.spent[k][1] * units for k, units in timed)
        wall = _clock() - self.started - self.one_off
        scaled = estimate * max(1.0, wall / measured) if measured > 0 else estimate
        return scaled, len(left) - len(timed)

    def line(self, done: int, total: int) -> str:
        """`12/36, about 1.5 min left`; while kinds of work still to do have not run once,
        `3/36, at least 20 s left (partial: 2 kinds of work not timed yet)`; the count alone
        before anything was timed."""
        known, untimed = self.known_left()
        if known is None:
            return f"{done}/{total}"
        if not untimed:
            return f"{done}/{total}, about {seconds(known)} left"
        kinds = "1 kind" if untimed == 1 else f"{untimed} kinds"
        if not known > 0:  # what is left is all untimed
            return f"{done}/{total}, time left unknown ({kinds} of work not timed yet)"
        return (f"{done}/{total}, at least {seconds(known)} left (partial: {kinds} of work not "
                "timed yet)")
