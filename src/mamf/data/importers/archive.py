"""A publisher's archive (tar of any compression, zip) or its extracted folder, read member by member.

Nothing is extracted to disk and no archive is loaded whole: a tar is streamed from start to end
(`r|*`), a zip is read through its central directory, a folder is walked in sorted order. Each
member is handed out as an open binary stream with its path relative to the archive root, so an
importer decides from the path alone whether it wants the bytes. Paths are never used to write
files, so a member named `../x` is just a name that matches nothing.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from mamf.system.errors import MamfError

# What a damaged archive raises while it is being read.
READ_ERRORS = (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile)


class Archive:
    """One input: `kind` is "folder", "zip" or "tar" (gzip, bzip2, xz or none)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().absolute()
        if not self.path.exists():
            raise MamfError(f"{self.path} does not exist")
        if self.path.is_dir():
            self.kind = "folder"
        elif zipfile.is_zipfile(self.path):
            self.kind = "zip"
        elif _is_tar(self.path):
            self.kind = "tar"
        else:
            raise MamfError(f"{self.path} is neither a folder nor a tar, tar.gz or zip archive")

    def __repr__(self) -> str:
        return f"Archive({str(self.path)!r}, {self.kind})"

    def members(self, want: Callable[[str], bool]) -> Iterator[tuple[str, IO[bytes]]]:
        """(path, stream) of each regular file whose path `want` accepts, in archive order.

        The stream is valid until the next item. A damaged archive is a MamfError.
        """
        try:
            if self.kind == "folder":
                yield from self._folder_members(want)
            elif self.kind == "zip":
                yield from self._zip_members(want)
            else:
                yield from self._tar_members(want)
        except READ_ERRORS as e:
            raise MamfError(f"{self.path} is damaged or truncated ({type(e).__name__}: {e}); "
                            "download it again") from None

    def _folder_members(self, want):
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.path).as_posix()
            for name in sorted(filenames):
                path = name if rel == "." else f"{rel}/{name}"
                if want(path) and os.path.isfile(os.path.join(dirpath, name)):
                    with open(os.path.join(dirpath, name), "rb") as f:
                        yield path, f

    def _zip_members(self, want):
        with zipfile.ZipFile(self.path) as zf:
            for info in zf.infolist():
                path = _clean(info.filename)
                if not info.is_dir() and want(path):
                    with zf.open(info) as f:
                        yield path, f

    def _tar_members(self, want):
        with tarfile.open(self.path, "r|*") as tar:
            for member in tar:
                path = _clean(member.name)
                if member.isfile() and want(path):
                    f = tar.extractfile(member)
                    if f is not None:
                        yield path, io.BufferedReader(_Sequential(f, self.path))

    def fingerprint(self) -> dict:
        """What identifies the input cheaply: path, kind, and for a file its size and mtime."""
        if self.kind == "folder":
            return {"path": str(self.path), "kind": self.kind}
        st = self.path.stat()
        return {"path": str(self.path), "kind": self.kind, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns}

    def sha256(self) -> str:
        """sha256 of the archive file; for a folder, of its listing (each file's path and size)."""
        digest = hashlib.sha256()
        if self.kind == "folder":
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames.sort()
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    rel = Path(full).relative_to(self.path).as_posix()
                    digest.update(f"{rel}\0{os.path.getsize(full)}\n".encode())
            return digest.hexdigest()
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()


class _Sequential(io.RawIOBase):
    """A member of a streamed tar as a plain forward-only stream (tarfile's own object breaks
    io.TextIOWrapper in stream mode: it asks its stream whether it can seek). The archive ending
    inside the member (a truncated download) is a MamfError here, where the reader reads it."""

    def __init__(self, member: IO[bytes], archive: Path):
        self._member, self._archive = member, archive

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            data = self._member.read(len(buffer))
        except READ_ERRORS as e:
            raise MamfError(f"{self._archive} is damaged or truncated ({type(e).__name__}: "
                            f"{e}); download it again") from None
        buffer[: len(data)] = data
        return len(data)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except READ_ERRORS:
        return False


def _clean(name: str) -> str:
    """A member name as a relative POSIX path: no leading './' or '/'."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def tail(path: str, depth: int) -> str:
    """The last `depth` components of a '/'-separated path (the whole path if it is shorter)."""
    return "/".join(path.split("/")[-depth:])


def basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]
