"""scikit-learn's bundled handwritten digits (`load_digits`: 1,797 images of 8x8, 10 classes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mamf.data.builders.common import MAX_PER_CLASS, MAX_SIZE, BuiltDataset, Log, build_with, check_int
from mamf.system.errors import MamfError

NAME = "digits"
VERSION = 1


def prompt(digit: int) -> str:
    return f"An image of the digit {digit}."


def build_digits(out: str | os.PathLike, *, log: Log = print, per_class: int | None = None,
                 size: int = 32) -> Path:
    """Write the digits as `<out>/<0..9>/<index>.png`, dark ink on white, `size` x `size` pixels.

    `per_class`: the first that many images of each digit in `load_digits` order (None = all,
    about 180 each). Values 0..16 are scaled to 0..255, inverted, and upscaled bilinearly.
    """
    check_int(NAME, "per_class", per_class, allow_none=True, maximum=MAX_PER_CLASS)
    check_int(NAME, "size", size, minimum=8, maximum=MAX_SIZE)
    options = {"per_class": per_class, "size": size}

    def make(tmp: Path) -> BuiltDataset:
        try:
            import sklearn
            from sklearn.datasets import load_digits
        except ImportError:
            raise MamfError("the digits builder needs scikit-learn: pip install scikit-learn") from None
        data = load_digits()
        images, target = np.asarray(data.images), np.asarray(data.target)
        log(f"{NAME}: {len(images)} images of 8x8 from scikit-learn {sklearn.__version__}; "
            f"writing {'all' if per_class is None else per_class} per class at {size}x{size}")
        ink = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        for digit in range(10):
            folder = tmp / str(digit)
            folder.mkdir()
            idx = np.flatnonzero(target == digit)
            for i in idx[:per_class] if per_class is not None else idx:
                img = Image.fromarray(255 - ink[i])
                if size != 8:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                img.save(folder / f"{int(i):04d}.png", compress_level=1)
        return BuiltDataset(
            title="Digits: scikit-learn's handwritten digits (UCI optical recognition, 8x8)",
            label_to_text={str(d): prompt(d) for d in range(10)},
            source=f"`sklearn.datasets.load_digits()` from scikit-learn {sklearn.__version__}, a copy "
                   "of the test set of the UCI \"Optical Recognition of Handwritten Digits\" data set "
                   "(E. Alpaydin and C. Kaynak, 1998; "
                   "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits).",
            licence="scikit-learn, which bundles the data, is BSD-3-Clause (Copyright the scikit-learn "
                    "developers). The UCI Machine Learning Repository lists the original data set under "
                    "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/): attribute E. Alpaydin "
                    "and C. Kaynak, \"Optical Recognition of Handwritten Digits\", UCI Machine Learning "
                    "Repository, 1998, doi:10.24432/C50P49. Changed here: rescaled to 0..255, "
                    "inverted and upscaled.",
            method=f"Each 8x8 image (integers 0..16, the count of on pixels in 4x4 blocks of a 32x32 "
                   "bitmap) is scaled to 0..255, inverted to dark ink on a white background, and "
                   f"upscaled bilinearly to {size}x{size}; grayscale PNG. "
                   + ("All images of each digit are kept." if per_class is None else
                      f"The first {per_class} images of each digit in `load_digits` order are kept.")
                   + " File names are the index in `load_digits`.",
        )

    return build_with(NAME, out, options, log, make, version=VERSION)
