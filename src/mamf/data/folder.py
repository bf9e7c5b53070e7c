"""Scan an image folder: `<root>/<label>/<image>` or `<root>/<subdataset>/<label>/<image>`.

Classes and files are sorted by name, never taken in file-system order, so tasks are reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mamf.system.errors import MamfError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


@dataclass(frozen=True)
class FolderScan:
    """The labelled image files of one dataset, classes and files in sorted order."""

    root: Path
    name: str
    classes: tuple[str, ...]
    files: tuple[tuple[Path, ...], ...]
    skipped_empty: tuple[str, ...] = ()
    skipped_other: int = 0
    top: Path | None = None  # the folder given, when `root` is one of its subdatasets

    def warn_skipped(self) -> None:
        """Say what was left out; called once by whoever loads the images, not by every scan."""
        if self.skipped_empty:
            names = [printable(n) for n in self.skipped_empty[:5]]
            log.warning("skipped %d label folder(s) with no images: %s", len(self.skipped_empty),
                        ", ".join(names) + (" ..." if len(self.skipped_empty) > 5 else ""))
        if self.skipped_other:
            log.warning("ignored %d file(s) that are not images (by extension)",
                        self.skipped_other)


def printable(name: str) -> str:
    """A file name as text that can be printed, logged and tokenised: bytes that are not UTF-8
    (which Python keeps as lone surrogates) become `\\xff` escapes."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _visible_dirs(path: Path) -> list[Path]:
    return sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _images(path: Path) -> tuple[list[Path], int]:
    images, other = [], 0
    for p in path.iterdir():
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            other += 1
    return sorted(images, key=lambda p: p.name), other


def subdatasets(root: Path) -> list[str]:
    """Names of subdatasets when `root` has the nested layout, else an empty list."""
    root = Path(root)
    dirs = _visible_dirs(root)
    if any(_images(d)[0] for d in dirs):
        return []
    return [d.name for d in dirs if any(_images(g)[0] for g in _visible_dirs(d))]


def scan_folder(root: str | Path, subdataset: str | None = None) -> FolderScan:
    """Find classes and their images; empty label folders and non-image files are skipped."""
    root = Path(root).expanduser()
    if not root.exists():
        raise MamfError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise MamfError(f"data folder {root} is not a folder")
    base, name, top = root, printable(root.resolve().name), None
    subs = subdatasets(root)
    if subdataset:
        if subdataset not in subs:
            choices = ", ".join(subs) if subs else "none: the folder has the plain layout"
            raise MamfError(f"no subdataset {subdataset!r} in {root} (subdatasets: {choices})")
        base, name, top = root / subdataset, f"{name}/{printable(subdataset)}", root
    elif subs:
        if len(subs) > 1:
            raise MamfError(f"{root} holds {len(subs)} subdatasets ({', '.join(subs)}): "
                            "choose one with --subdataset")
        base, name, top = root / subs[0], f"{name}/{printable(subs[0])}", root
    classes, files, empty, other = [], [], [], 0
    for d in _visible_dirs(base):
        images, n_other = _images(d)
        other += n_other
        if images:
            classes.append(d.name)
            files.append(tuple(images))
        else:
            empty.append(d.name)
    if not classes:
        raise MamfError(f"no images found in {base}: expected <root>/<label>/<image files>")
    return FolderScan(base, name, tuple(classes), tuple(files), tuple(empty), other, top)
