"""Subnormal floats flushed to zero while mamf trains and adapts on a CPU.

A model that collapses (its loss at chance) back-propagates gradients that shrink towards 1e-38
and below, into float32's subnormal range. x86 CPUs take a slow microcode path on every
subnormal operand: on effnet-minilm with the last image block unfrozen, 1x1-convolution
backward went from milliseconds to over a second, and a training of 152 steps from 35 s to
14 min (bench/denormals.py). Flush-to-zero and denormals-are-zero (the CPU's FTZ/DAZ modes, what
TensorFlow sets by default on its CPU threads) treat those values as 0 at full speed. Only values
below 1.2e-38 change, far below anything a float32 sum of normal-sized terms can hold, so a run
without subnormals keeps its bits exactly.

The mode is per thread, and onnxruntime clears it whenever a session is created, so it is set
around the work itself (`flushed`) and kept across session creation (`kept`), not once per
process. `MAMF_DENORMALS=keep` leaves IEEE subnormals alone (slow, but bit-for-bit what
PyTorch does by default); rows record which mode computed them (`denormals`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping

ENV = "MAMF_DENORMALS"
MODES = ("flush", "keep")


def mode(environ: Mapping[str, str] = os.environ) -> str:
    """'flush' (the default) or 'keep', from MAMF_DENORMALS; anything else is refused."""
    from mamf.system.errors import MamfError

    value = environ.get(ENV, "").strip().lower() or "flush"
    if value not in MODES:
        raise MamfError(f"{ENV}={environ[ENV]!r}: expected one of {', '.join(MODES)}")
    return value


def flushing() -> bool:
    """Whether this thread flushes subnormals now: a subnormal product comes out as 0."""
    import torch

    return bool((torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0.0)


def _set(flush: bool) -> None:
    import torch

    torch.set_flush_denormal(flush)  # False where the CPU has no such mode: nothing to do


@contextlib.contextmanager
def flushed() -> Iterator[None]:
    """This thread in the configured mode for the block, then back to what it was; usable as a
    decorator on the loops that train and adapt."""
    before = flushing()
    _set(mode() == "flush")
    try:
        yield
    finally:
        _set(before)


@contextlib.contextmanager
def kept() -> Iterator[None]:
    """The thread's mode as it was before the block (around onnxruntime's session creation)."""
    before = flushing()
    try:
        yield
    finally:
        if flushing() != before:
            _set(before)
