"""CUB-200-2011 (Caltech-UCSD Birds) from `CUB_200_2011.tgz` or its extracted folder.

Expected layout, as documented in the README inside the archive (`CUB_200_2011/README`) and on
https://www.vision.caltech.edu/datasets/cub_200_2011/ (archive: data.caltech.edu record 20098):

    CUB_200_2011/images/<class_id>.<Class_Name>/<image>.jpg
    CUB_200_2011/classes.txt             <class_id> <class_name>, e.g. "1 001.Black_footed_Albatross"
    CUB_200_2011/images.txt              <image_id> <image_name> (the path under images/)
    CUB_200_2011/image_class_labels.txt  <image_id> <class_id>
    CUB_200_2011/train_test_split.txt    <image_id> <is_training_image>
    CUB_200_2011/bounding_boxes.txt      <image_id> <x> <y> <width> <height> (pixels)

Both sides of the suggested train/test split are imported (the paper's protocol splits images
itself). The label folder is the class name without its number prefix (`Black_footed_Albatross`);
underscores read as spaces in the prompt "A photo of Black footed Albatross".
"""

from __future__ import annotations

import os
from pathlib import Path

from mamf.data.builders.common import Log
from mamf.data.importers.archive import Archive, basename
from mamf.data.importers.common import Catalogue, Item, read_metadata, run_import
from mamf.system.errors import MamfError

NAME = "cub"
VERSION = 1
FILES = {"classes.txt": 2, "images.txt": 2, "image_class_labels.txt": 2,  # name -> columns
         "train_test_split.txt": 2, "bounding_boxes.txt": 5}


def prompt(name: str) -> str:
    return f"A photo of {name}"


def _rows(text: bytes, path: str, columns: int) -> dict[str, list[str]]:
    """`<id> <value> ...` lines as id -> values; a malformed line is a MamfError."""
    rows = {}
    for n, line in enumerate(text.decode("utf-8", "replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != columns:
            raise MamfError(f"{path} line {n} has {len(parts)} fields, not {columns}: {line[:80]!r}")
        rows[parts[0]] = parts[1:]
    return rows


def class_name(folder: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black_footed_Albatross'."""
    number, dot, rest = folder.partition(".")
    return rest if dot and number.isdigit() and rest else folder


def read_cub(archives: list[Archive], log: Log) -> Catalogue:
    found = read_metadata(archives, tuple(FILES),
                          lambda stream, path: _rows(stream.read(), path, FILES[basename(path)]),
                          "CUB-200-2011 (CUB_200_2011.tgz or its extracted folder)")
    classes = {cid: class_name(v[0]) for cid, v in found["classes.txt"].items()}
    labels = found["image_class_labels.txt"]
    boxes = found["bounding_boxes.txt"]
    split = found["train_test_split.txt"]
    items = []
    for image_id, (image_name,) in found["images.txt"].items():
        cid = labels.get(image_id, [None])[0]
        if cid not in classes:
            raise MamfError(f"CUB image {image_id} ({image_name}) has no class in "
                            "image_class_labels.txt/classes.txt")
        box = boxes.get(image_id)
        items.append(Item(key="/".join(image_name.split("/")[-2:]), label=classes[cid],
                          name=basename(image_name),
                          box=tuple(float(v) for v in box) if box else None))
    n_train = sum(1 for v in split.values() if v[0] == "1")
    return Catalogue(
        items=items,
        label_to_text={label: prompt(label.replace("_", " ")) for label in classes.values()},
        key_depth=2,
        title="CUB-200-2011: Caltech-UCSD Birds (200 species)",
        source="Caltech-UCSD Birds-200-2011 (C. Wah, S. Branson, P. Welinder, P. Perona and "
               "S. Belongie, technical report CNS-TR-2011-001, California Institute of Technology, "
               "2011), https://www.vision.caltech.edu/datasets/cub_200_2011/.",
        licence="The publishers ask that the data set be cited (see the README in the archive). "
                "The images were collected from Flickr and remain the copyright of their "
                "photographers; use them for non-commercial research and do not redistribute "
                "them. Check the terms on the data set's page before any other use.",
        method="Class names are `classes.txt` names without their number prefix (label folders); "
               "underscores read as spaces in the prompt \"A photo of {name}\". Labels come from "
               "`image_class_labels.txt`; the images of both sides of `train_test_split.txt` "
               f"({n_train:,} marked for training, {len(split) - n_train:,} for testing) are "
               "imported, since the paper's protocol makes its own splits. Image files are "
               "copied unchanged unless cropping to the bounding boxes was asked for.",
    )


def _without_boxes(items: list[Item]) -> list[Item]:
    return [Item(it.key, it.label, it.name) for it in items]


def import_cub(sources, out: str | os.PathLike, *, classes: int | None = None,
               per_class: int | None = None, seed: int = 0, crop_boxes: bool = False,
               log: Log = print) -> Path:
    """Import CUB-200-2011; `crop_boxes` crops each image to its bounding box (JPEG quality 95)."""

    def read(archives: list[Archive], log: Log) -> Catalogue:
        cat = read_cub(archives, log)
        if crop_boxes:
            cat.method += (" Each image is cropped to its box in `bounding_boxes.txt` (x, y, "
                           "width, height, clipped to the image) and saved as JPEG quality 95.")
        return cat

    return run_import(NAME, read, sources, out, classes=classes, per_class=per_class, seed=seed,
                      log=log, version=VERSION, extra_options={"crop_boxes": bool(crop_boxes)},
                      adjust=None if crop_boxes else _without_boxes)
