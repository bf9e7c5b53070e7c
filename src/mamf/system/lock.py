"""One writer per output folder: a second process refuses at once instead of interleaving rows."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from mamf.system.errors import MamfError
from mamf.system.io import make_folder, writing

LOCK_NAME = ".mamf.system.lock"


@contextlib.contextmanager
def exclusive(folder: str | Path):
    """Hold an advisory lock on `folder` (released when the process ends, even by SIGKILL)."""
    folder = make_folder(Path(folder))
    with writing(folder / LOCK_NAME):
        handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held for the context's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise MamfError(f"another mamf process (pid {holder}) is writing to {folder}: wait "
                            "for it to finish or choose another --out") from None
        with writing(folder / LOCK_NAME):
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        yield
    finally:
        handle.close()
