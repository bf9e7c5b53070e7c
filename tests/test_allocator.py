"""`mamf.keep_freed_memory()` (called by the CLI) keeps freed memory in the process (glibc only);
MAMF_MALLOC=system opts out; `import mamf` alone changes nothing."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

import mamf
from mamf.system import allocator

BLOCK = 64 << 20  # over glibc's largest default mmap threshold (32 MiB)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]


def mmapped_bytes() -> int:
    """Bytes glibc holds in blocks of their own mmap (freed straight back to the kernel)."""
    libc = allocator.glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    libc.mallinfo2.restype = MallInfo2
    return int(libc.mallinfo2().hblkhd)


def test_explicit_call_serves_large_blocks_from_the_heap():
    assert mamf.keep_freed_memory({})
    before = mmapped_bytes()
    block = np.empty(BLOCK, np.uint8)
    assert mmapped_bytes() - before < BLOCK  # with glibc's defaults this block is its own mmap
    del block


class SpyLibc:
    def __init__(self):
        self.calls: list[tuple[int, int]] = []
        spy = self

        class Mallopt:
            def __call__(self, param: int, value: int) -> int:
                spy.calls.append((param, value))
                return 1

        self.mallopt = Mallopt()


def test_thresholds_set_unless_system_asked_for(monkeypatch):
    spy = SpyLibc()
    monkeypatch.setattr(allocator, "glibc", lambda: spy)
    assert allocator.keep_freed_memory({})
    assert spy.calls == [(allocator.M_MMAP_THRESHOLD, 1 << 30),
                         (allocator.M_TRIM_THRESHOLD, (1 << 31) - 1)]
    spy.calls.clear()
    assert not allocator.keep_freed_memory({"MAMF_MALLOC": "system"})
    assert spy.calls == []


def test_other_c_libraries_left_alone(monkeypatch):
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    assert not allocator.keep_freed_memory({})


PROBE = """
import numpy as np, mamf
from test_allocator import mmapped_bytes, BLOCK
kept = mamf.keep_freed_memory()
before = mmapped_bytes()
block = np.empty(BLOCK, np.uint8)
print(kept, mmapped_bytes() - before >= BLOCK)
"""


@pytest.mark.slow
@pytest.mark.parametrize("setting, expected", [(None, "True False"), ("system", "False True")])
def test_fresh_process_and_opt_out(setting, expected):
    if allocator.glibc() is None:
        pytest.skip("needs glibc")
    env = {k: v for k, v in os.environ.items() if k != "MAMF_MALLOC"}
    if setting:
        env["MAMF_MALLOC"] = setting
    env["PYTHONPATH"] = os.path.dirname(__file__)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert " ".join(out[-2:]) == expected
