"""FGVCx Fungi 2018 from `fungi_train_val.tgz` and `train_val_annotations.tgz`, or their folders.

Expected layout, as documented in https://github.com/visipedia/fgvcx_fungi_comp (README, "Data"
and "Annotation Format"): the images archive unpacks to `images/<category>/<image>.JPG`; the
annotations archive holds `train.json` and `val.json` in COCO style:

    {"images": [{"id", "file_name": "images/<category>/<image>.JPG", ...}],
     "annotations": [{"id", "image_id", "category_id"}],
     "categories": [{"id", "name", "supercategory"}], "info": ..., "licenses": ...}

Pass both archives (`--from` twice), or one folder holding both. The training and validation
images (85,578 + 4,182 of 1,394 species) are merged into one set; the test images have no labels
and are not read. The label folder is the species name, path-safe; the prompt "A photo of {species}".
"""

from __future__ import annotations

import os
from pathlib import Path

from mamf.data.builders.common import Log, unique_slugs
from mamf.data.importers.archive import Archive, basename, tail
from mamf.data.importers.common import Catalogue, Item, read_json, read_metadata, run_import
from mamf.system.errors import MamfError

NAME = "fungi"
VERSION = 1
FILES = ("train.json", "val.json")


def prompt(name: str) -> str:
    return f"A photo of {name}"


def _records(data, key: str, fields: tuple[str, ...], where: str) -> list[dict]:
    records = data.get(key) if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and all(f in r for f in fields)
                                                for r in records):
        raise MamfError(f"{where} has no COCO-style {key!r} list with {', '.join(fields)}")
    return records


def read_fungi(archives: list[Archive], log: Log) -> Catalogue:
    found = read_metadata(archives, FILES, read_json, "FGVCx Fungi 2018 (train_val_annotations.tgz "
                          "with fungi_train_val.tgz, or their extracted folders)")
    names: dict[int, str] = {}
    labelled: list[tuple[str, int]] = []  # (file_name, category id)
    for split in FILES:
        data = found[split]
        for c in _records(data, "categories", ("id", "name"), split):
            names[c["id"]] = str(c["name"])
        files = {im["id"]: str(im["file_name"])
                 for im in _records(data, "images", ("id", "file_name"), split)}
        for a in _records(data, "annotations", ("image_id", "category_id"), split):
            if a["image_id"] not in files:
                raise MamfError(f"{split}: annotation {a.get('id')} names image {a['image_id']}, "
                                "which is not in its images list")
            labelled.append((files[a["image_id"]], a["category_id"]))
    unknown = sorted({c for _, c in labelled if c not in names})
    if unknown:
        raise MamfError(f"{'/'.join(FILES)}: category id {unknown[0]} has no entry in categories")
    ids = sorted({c for _, c in labelled}, key=lambda c: names[c])
    slugs = dict(zip(ids, unique_slugs([names[c] for c in ids])))
    items = [Item(key=tail(f, 2), label=slugs[c], name=basename(f)) for f, c in labelled]
    return Catalogue(
        items=items,
        label_to_text={slugs[c]: prompt(names[c]) for c in ids},
        key_depth=2,
        title="Fungi: FGVCx Fungi Classification 2018 (train and validation images)",
        source="The 2018 FGVCx Fungi Classification Challenge (FGVC5 workshop, CVPR 2018), data "
               "from the Danish Svampe Atlas, https://github.com/visipedia/fgvcx_fungi_comp.",
        licence="The challenge's terms of use: abide by the Danish Svampe Atlas Terms of Service "
                "(https://svampe.databasen.org/citation); use the data only for non-commercial "
                "research and educational purposes; do NOT distribute the images; the Svampe "
                "Atlas gives no warranties, and you accept full responsibility for your use.",
        method="Labels come from the `annotations` of `train.json` and `val.json` (image id -> "
               "category id), names from their `categories`; the images of both files are "
               f"merged ({len(labelled):,} labelled images of {len(ids):,} species). The label "
               "folder is the species name made path-safe (e.g. `abortiporus_biennis`); the "
               "prompt is \"A photo of {species}\". Images are matched by their category folder "
               "and file name and copied unchanged.",
    )


def import_fungi(sources, out: str | os.PathLike, *, classes: int | None = None,
                 per_class: int | None = None, seed: int = 0, log: Log = print) -> Path:
    """Import the FGVCx Fungi 2018 training and validation images into `out`."""
    return run_import(NAME, read_fungi, sources, out, classes=classes, per_class=per_class,
                      seed=seed, log=log, version=VERSION)
