"""mini-ImageNet in the split of Ravi & Larochelle (ICLR 2017), from an archive or a folder.

Expected layout: the split files `train.csv`, `val.csv` and `test.csv` of
https://github.com/twitter/meta-learning-lstm (data/miniImagenet), each a header `filename,label`
and one line per image, e.g. `n0153282900000005.jpg,n01532829`, beside a folder of the 60,000
images (600 per class), usually `images/`:

    [mini-imagenet/]train.csv, val.csv, test.csv
    [mini-imagenet/]images/n0153282900000005.jpg ...

Images are matched by file name wherever they sit in the input. All 100 classes (64 + 16 + 20)
are imported; the paper's protocol makes its own splits. Class names are the first WordNet lemma
of each id, from the shipped table `mini_imagenet_classes.json`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from functools import cache
from pathlib import Path

from mamf.data.builders.common import Log, unique_slugs
from mamf.data.importers.archive import Archive, basename
from mamf.data.importers.common import Catalogue, Item, read_metadata, run_import
from mamf.system.errors import MamfError

NAME = "mini-imagenet"
VERSION = 1
FILES = ("train.csv", "val.csv", "test.csv")
TABLE = Path(__file__).with_name("mini_imagenet_classes.json")


@cache
def class_table() -> dict:
    """{'splits': {split: [wnid, ...]}, 'names': {wnid: name}, 'source': ...}."""
    return json.loads(TABLE.read_text(encoding="utf-8"))


def prompt(name: str) -> str:
    return f"A photo of {name}"


def _read_split(stream, path: str) -> list[tuple[str, str]]:
    rows = list(csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline="")))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise MamfError(f"{path} does not start with the header filename,label")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) != 2:
            raise MamfError(f"{path} line {n} is not filename,label: {','.join(row)[:80]!r}")
        out.append((row[0].strip(), row[1].strip()))
    return out


def read_mini_imagenet(archives: list[Archive], log: Log) -> Catalogue:
    found = read_metadata(archives, FILES, _read_split, "mini-ImageNet (Ravi & Larochelle's "
                          "split files beside the images)")
    table = class_table()
    wnids = sorted(table["names"])
    slugs = dict(zip(wnids, unique_slugs([table["names"][w] for w in wnids])))
    items = []
    for split in FILES:
        expected = set(table["splits"][split.removesuffix(".csv")])
        for filename, wnid in found[split]:
            if wnid not in expected:
                raise MamfError(f"{split} lists class {wnid!r}, which is not one of the "
                                f"{len(expected)} {split.removesuffix('.csv')} classes of "
                                "Ravi & Larochelle's mini-ImageNet")
            items.append(Item(key=basename(filename), label=slugs[wnid], name=basename(filename)))
    counts = {s: len(found[s]) for s in FILES}
    return Catalogue(
        items=items,
        label_to_text={slugs[w]: prompt(table["names"][w]) for w in wnids},
        key_depth=1,
        title="mini-ImageNet (Ravi & Larochelle split, 100 classes)",
        source="mini-ImageNet (O. Vinyals et al., \"Matching Networks for One Shot Learning\", "
               "NeurIPS 2016) in the split of S. Ravi and H. Larochelle, \"Optimization as a "
               "Model for Few-Shot Learning\", ICLR 2017: images from ImageNet (ILSVRC-2012, "
               "https://image-net.org). " + table["source"],
        licence="The images are ImageNet's: under the ImageNet terms of access, for "
                "non-commercial research and educational purposes only; they remain the "
                "copyright of their owners. Do not redistribute them. The class names are "
                "WordNet 3.0 lemmas (Princeton WordNet licence: free use with attribution).",
        method="Labels are the WordNet ids of the split files "
               f"(train.csv {counts['train.csv']:,}, val.csv {counts['val.csv']:,}, "
               f"test.csv {counts['test.csv']:,} images); the classes of all three are imported, "
               "since the paper's protocol makes its own splits. Each id's label folder is its "
               "first WordNet lemma, path-safe (e.g. `house_finch` for n01532829), and the "
               "prompt is \"A photo of {name}\". Images are matched by file name anywhere in the "
               "input and copied unchanged.",
        notes="Where a lemma is ambiguous out of context (n13133613 `ear` is an ear of corn, "
              "n04515003 `upright` an upright piano) edit `label_to_text.json` if you want "
              "fuller prompts; `mini_imagenet_classes.json` in mamf lists the ids and splits.",
    )


def import_mini_imagenet(sources, out: str | os.PathLike, *, classes: int | None = None,
                         per_class: int | None = None, seed: int = 0, log: Log = print) -> Path:
    """Import mini-ImageNet (all 100 classes of the Ravi & Larochelle split) into `out`."""
    return run_import(NAME, read_mini_imagenet, sources, out, classes=classes, per_class=per_class,
                      seed=seed, log=log, version=VERSION)
