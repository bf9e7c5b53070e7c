"""Files written so that a crash never leaves a half-written one behind, and a write that the
file system refuses (a full disk, a read-only folder, a file where a folder should be) ends in one
clear line naming the path."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError

from mamf.system.errors import MamfError


@contextlib.contextmanager
def writing(path: Path, hint: str = "") -> Iterator[None]:
    """Turn an OSError (or safetensors' wrapped I/O error) raised while writing `path` into a
    MamfError naming it: the user can free space or pick another folder; it is not a bug."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise MamfError(f"cannot write {path}: {reason}{hint}") from None


def make_folder(path: Path, hint: str = "") -> Path:
    """`mkdir -p`; a file in the way (the folder itself or one above it) is one clear line."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in [*reversed(path.parents), path]
                        if p.exists() and not p.is_dir()), path)
        where = "" if blocker == path else f" (it lies under {blocker})"
        raise MamfError(f"cannot make folder {path}: {blocker} is a file, not a folder"
                        f"{where}{hint}") from None
    except OSError as e:
        raise MamfError(f"cannot make folder {path}: {e.strerror or e}{hint}") from None
    return path


def fsync_path(path: Path) -> None:
    """Flush a written file, or a folder's entries (a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path` (and fsync
    the folder, so the rename itself survives a power cut)."""
    path = Path(path)
    make_folder(path.parent)
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644 & ~_umask())  # mkstemp makes 0600 files; results are to be read
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_path(path.parent)


def follow_umask(path: Path) -> None:
    """Give a file another library wrote (safetensors writes 0600) the mode every other file of
    mamf's gets: 0644 less the umask."""
    os.chmod(path, 0o644 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite(value):
    """`value` with every NaN or infinite float made None: strict JSON readers refuse them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def append_jsonl(path: Path, row: dict) -> None:
    """Append one JSON row as a single write of one line, flushed to disk; a NaN or infinity
    in it is written as null (never as the invalid JSON `NaN`)."""
    path = Path(path)
    make_folder(path.parent)
    line = (json.dumps(finite(row), sort_keys=False, allow_nan=False) + "\n").encode("utf-8")
    with writing(path):
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a kill tore the previous line: ours gets a line of its own
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (from a kill mid-write) is ignored."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
