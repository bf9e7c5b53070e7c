"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (28x28 grayscale, 10 classes)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from mamf.data.builders.common import BuiltDataset, Log, build_with, check_folder, check_int
from mamf.system.errors import MamfError, shown

NAME = "fashion-mnist"
VERSION = 1
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_COPYRIGHT = Path("/usr/share/doc/dataset-fashion-mnist/copyright")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

# (label folder, prompt) in the order of the label ids 0..9 of the original data set.
CLASSES = (
    ("t-shirt_top", "A photo of a T-shirt or top."),
    ("trouser", "A photo of a pair of trousers."),
    ("pullover", "A photo of a pullover."),
    ("dress", "A photo of a dress."),
    ("coat", "A photo of a coat."),
    ("sandal", "A photo of a sandal."),
    ("shirt", "A photo of a shirt."),
    ("sneaker", "A photo of a sneaker."),
    ("bag", "A photo of a bag."),
    ("ankle_boot", "A photo of an ankle boot."),
)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array: labels (n,) or images (n, rows, cols)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise MamfError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise MamfError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    if len(dims) != ndim or len(raw) != header + int(np.prod(dims)):
        raise MamfError(f"{path} is truncated or malformed (dims {dims}, {len(raw)} bytes)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _missing(source: Path, split: str) -> list[Path]:
    return [source / f for f in FILES[split] if not (source / f).is_file()]


def _install(log: Log) -> None:
    """apt-get install the Debian package when running as root; else say how to."""
    cmd = f"apt-get install -y {DEBIAN_PACKAGE}"
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (is_root and shutil.which("apt-get")):
        how = cmd if is_root else f"sudo {cmd}"
        raise MamfError(f"Fashion-MNIST is not installed under {DEFAULT_SOURCE}: run `{how}` "
                        "(Debian/Ubuntu), or pass source_dir= a folder with the original .gz files")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess:
        log(f"{NAME}: running apt-get {' '.join(args)}")
        try:
            return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True,
                                  timeout=900)
        except subprocess.TimeoutExpired:
            raise MamfError(f"`apt-get {' '.join(args)}` took over 15 minutes; run `{cmd}` "
                            "yourself") from None

    if apt("install", "-y", DEBIAN_PACKAGE).returncode == 0:
        return
    apt("update")
    done = apt("install", "-y", DEBIAN_PACKAGE)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise MamfError(f"could not install {DEBIAN_PACKAGE} with apt-get ({last}); "
                        f"run `{cmd}` yourself or pass source_dir=")


def _licence_text() -> str:
    found = ""
    try:
        text = DEBIAN_COPYRIGHT.read_text(encoding="utf-8", errors="replace")
        if "License: Expat" in text:
            found = f" (checked: {DEBIAN_COPYRIGHT} says `License: Expat`, Copyright 2017 Zalando SE)"
    except OSError:
        pass
    return ("MIT (Expat), Copyright (c) 2017 Zalando SE, "
            f"https://github.com/zalandoresearch/fashion-mnist{found}. Keep the copyright notice "
            "and permission notice with copies of the data.")


def build_fashion_mnist(out: str | os.PathLike, *, log: Log = print, per_class: int | None = 100,
                        split: str = "train", source_dir: str | os.PathLike | None = None,
                        install: bool = True) -> Path:
    """Write Fashion-MNIST images as `<out>/<class>/<split>_<index>.png` (28x28 grayscale).

    `per_class`: the first that many images of each class in file order (None = all: 6,000 per
    class for train, 1,000 for test). `split`: "train" or "test". `source_dir`: a folder with the
    original idx .gz files (default: the Debian package's, installed with apt-get when missing,
    running as root and `install` is true).
    """
    check_int(NAME, "per_class", per_class, allow_none=True)
    if not isinstance(split, str) or split not in FILES:
        raise MamfError(f"{NAME}: split must be 'train' or 'test', not {shown(split)}")
    check_folder(NAME, "source_dir", source_dir)
    options = {"per_class": per_class, "split": split}

    def make(tmp: Path) -> BuiltDataset:
        source = Path(source_dir).expanduser() if source_dir is not None else DEFAULT_SOURCE
        missing = _missing(source, split)
        if missing and source_dir is not None:
            raise MamfError(f"{NAME}: {missing[0]} not found (source_dir={source})")
        if missing:
            if not install:
                raise MamfError(f"Fashion-MNIST is not installed under {source}: "
                                f"run `sudo apt-get install {DEBIAN_PACKAGE}`")
            _install(log)
            if _missing(source, split):
                raise MamfError(f"{DEBIAN_PACKAGE} is installed but {_missing(source, split)[0]} "
                                "is missing; pass source_dir= a folder with the original .gz files")
        images_file, labels_file = (source / f for f in FILES[split])
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise MamfError(f"{NAME}: {images_file} and {labels_file} do not match "
                            f"(shapes {images.shape} and {labels.shape})")
        if labels.size and labels.max() >= len(CLASSES):
            raise MamfError(f"{NAME}: {labels_file} has label {labels.max()}; expected 0..9")
        log(f"{NAME}: read {len(images)} {split} images from {source}; writing "
            f"{'all' if per_class is None else per_class} per class")
        for k, (folder_name, _) in enumerate(CLASSES):
            folder = tmp / folder_name
            folder.mkdir()
            idx = np.flatnonzero(labels == k)
            for i in idx[:per_class] if per_class is not None else idx:
                Image.fromarray(images[i]).save(folder / f"{split}_{int(i):05d}.png", compress_level=1)
        return BuiltDataset(
            title=f"Fashion-MNIST ({split} split)",
            label_to_text={folder_name: text for folder_name, text in CLASSES},
            source=f"Fashion-MNIST by Zalando Research (H. Xiao, K. Rasul, R. Vollgraf, 2017, "
                   f"arXiv:1708.07747), read from `{images_file}` and `{labels_file}`"
                   + (f" (Debian package `{DEBIAN_PACKAGE}`)." if source_dir is None else "."),
            licence=_licence_text(),
            method="The idx files are parsed with numpy; each 28x28 grayscale image (light garment "
                   "on black, as in the original) is written unchanged as a PNG named by its index "
                   f"in the {split} file. "
                   + ("All images are kept." if per_class is None else
                      f"The first {per_class} images of each class in file order are kept."),
            notes="Class names: " + ", ".join(
                ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                 "Bag", "Ankle boot"]) + " (label ids 0..9); label folders are path-safe versions.",
        )

    return build_with(NAME, out, options, log, make, version=VERSION)
