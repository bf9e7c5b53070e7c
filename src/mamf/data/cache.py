"""Decode every image once per (file set, resolution) into a memory-mapped uint8 array.

Training never decodes an image file: it slices this array. Memory stays flat as datasets grow
because the array is read lazily from disk. The cache key hashes paths, sizes, mtimes, inodes
and ctimes (`_key`), so an edited folder gets a fresh cache; the array is written to a temporary
file and renamed into place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mamf.system.io import atomic_write_text, make_folder, writing
from mamf.system.progress import bar

log = logging.getLogger(__name__)

CACHE_HINT = " (the image cache: set MAMF_CACHE_DIR to a writable folder with free space)"


def cache_root() -> Path:
    """MAMF_CACHE_DIR, else ~/.cache/mamf. Set but empty is unset (as XDG reads its own
    variables): an empty path would be the current folder."""
    return Path(os.environ.get("MAMF_CACHE_DIR") or Path.home() / ".cache" / "mamf")


def third_party_caches() -> None:
    """Before onnxruntime or matplotlib is imported: onnxruntime's telemetry, which keeps a
    device id and a database under ~/.cache, is off, and matplotlib keeps its configuration
    and font cache in `<cache>/matplotlib`, not under the home folder. Each only where the
    user has not set it (ORT_DISABLE_TELEMETRY, MPLCONFIGDIR)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))


def _key(files: list[Path], size: int) -> str:
    """Each file's path, size, modification time, inode and status-change time (ctime), all
    in nanoseconds. A file rewritten in place with its old size and modification time put
    back (`touch -r`, `cp --preserve`, `rsync -t`) keeps the first two, but the kernel moves
    its ctime (no call sets it) and a file replaced by a rename has a new inode: the cache is
    rebuilt. Hashing the content would be exact too but reads every byte of the data on every
    load; a chmod or a new hard link moves the ctime as well, costing one rebuild."""
    h = hashlib.sha256(f"v3:{size}".encode())  # v2: decode crops before it resizes
    for f in files:
        st = f.stat()  # the path as the file system's bytes: a name need not be UTF-8
        h.update(os.fsencode(f.resolve()) + f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
                 f"\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()[:20]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, LA, I;16, CMYK, ...) -> RGB; transparency goes on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.max() > 0 else 1.0
        img = Image.fromarray((arr / top * 255.0).round().astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = arr.min(), arr.max()
        img = Image.fromarray(((arr - lo) / ((hi - lo) or 1.0) * 255).round().astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def decode(path: Path, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bicubic) and centre-crop: CLIP's own preprocessing.

    Only the crop is resampled (PIL's `box` is its region in the source image), so the work is
    bounded by `size`, not by the long side: a legal 1 x 200000 PNG would otherwise be stretched
    to 32 x 6.4 million pixels first. A square image gives the same pixels either way.
    """
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
    return fit(to_rgb(img), size)


def fit(img: Image.Image, size: int) -> np.ndarray:
    """An RGB image's shorter side resized to `size` and its centre square cropped (`decode`)."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))  # the resized image
    left, top = (nw - size) // 2, (nh - size) // 2  # its centre crop, in the source image:
    box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
    return np.asarray(img.resize((size, size), Image.BICUBIC, box=box), dtype=np.uint8)


def reserve(path: Path) -> None:
    """Allocate a (sparse) file's blocks now: a full disk is then an OSError here, not a
    SIGBUS when a memory-mapped page is first written."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # (a file system that cannot reserve blocks is written as before)
    finally:
        os.close(fd)


UNREADABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
WINDOW = 256  # files in flight at once: memory stays bounded however large the folder


def _decode_or_error(path: Path, size: int) -> np.ndarray | Exception:
    try:
        return decode(path, size)
    except UNREADABLE as e:
        return e


def _decoded(files: list[Path], size: int, workers: int) -> Iterator[np.ndarray | Exception]:
    """Each file's pixels (or why it is unreadable), in order. PIL lets go of the GIL while it
    decodes and resizes, so `workers` threads keep as many cores busy; each image is decoded on
    its own, so the pixels are the same for any number of workers."""
    if workers <= 1:
        yield from (_decode_or_error(f, size) for f in files)
        return
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), WINDOW):
            window = files[start : start + WINDOW]
            yield from pool.map(_decode_or_error, window, [size] * len(window))


def load_or_build(files: list[Path], size: int, name: str = "data",
                  progress: bool = True, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Return (images [M, size, size, 3] uint8 memmap, ok [M] bool). Unreadable files get ok=False.
    `workers`: threads that decode (the pixels do not depend on it)."""
    root = cache_root()
    key = _key(files, size)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
    array_path = root / f"{safe}-{size}-{key}.npy"
    meta_path = root / f"{safe}-{size}-{key}.json"
    if array_path.exists() and meta_path.exists():
        ok = np.array(json.loads(meta_path.read_text())["ok"], dtype=bool)
        return np.load(array_path, mmap_mode="r"), ok
    make_folder(root, CACHE_HINT)
    tmp = array_path.with_name(f".{array_path.name}.{os.getpid()}.tmp")
    with writing(tmp, CACHE_HINT):
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                              shape=(len(files), size, size, 3))
            reserve(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    ok = np.ones(len(files), dtype=bool)
    bad: list[str] = []
    try:
        decoded = bar(_decoded(files, size, workers), total=len(files), enabled=progress,
                      desc=f"caching {name} at {size}px (once)", unit="img", leave=False)
        for i, pixels in enumerate(decoded):
            if isinstance(pixels, Exception):
                ok[i] = False
                bad.append(f"{files[i]}: {type(pixels).__name__}")
            else:
                array[i] = pixels
        with writing(array_path, CACHE_HINT):
            array.flush()
            del array
            os.replace(tmp, array_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(meta_path, json.dumps({"ok": ok.tolist(), "bad": bad, "size": size}))
    if bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(bad), bad[0])
    return np.load(array_path, mmap_mode="r"), ok
