"""Keep freed memory in the process: glibc's malloc tuned at `import mamf`, before any big tensor.

By default glibc serves every block over a dynamic threshold (at most 32 MiB) with its own mmap and
hands it back to the kernel when freed; past a threshold it also trims the heap top. An eager
PyTorch step allocates and frees activation buffers of tens of MiB, so the next step faults every
page in again: on 2 cores that was half of a training step, spent in the kernel. Two `mallopt`
calls keep such blocks in the heap for reuse, at the cost of a higher peak RSS (bench/malloc.py).

`MAMF_MALLOC=system` leaves glibc's defaults alone. Processes without glibc (macOS, Windows, musl)
are never touched.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

ENV = "MAMF_MALLOC"
M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and go back to it
TRIM_THRESHOLD = (1 << 31) - 1  # the heap top is trimmed only past 2 GiB free (mallopt takes an int)


def glibc() -> ctypes.CDLL | None:
    """The C library this process runs on, when it is glibc; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return None
    if not version or not version.startswith("glibc"):
        return None
    try:
        return ctypes.CDLL(None)  # the process's own symbols: glibc's malloc family
    except OSError:
        return None


def keep_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Raise glibc's mmap and trim thresholds; True when both took effect."""
    if environ.get(ENV, "").strip().lower() == "system":
        return False
    libc = glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap and trim)
