"""CLEVR counting from `CLEVR_v1.0.zip` or its extracted folder: the label is the object count.

Expected layout, as documented in the README of the archive and on
https://cs.stanford.edu/people/jcjohns/clevr/ (J. Johnson et al., CVPR 2017):

    CLEVR_v1.0/images/{train,val,test}/CLEVR_<split>_<index>.png
    CLEVR_v1.0/scenes/CLEVR_{train,val}_scenes.json
        {"info": {...}, "scenes": [{"image_index", "image_filename", "split",
                                    "objects": [{...}, ...], "relationships", "directions"}]}

The label of an image is `len(objects)` of its scene (3 to 10); the prompt is the paper's
"An image of {x} objects". The test split ships without scenes and is left out. A scenes file is
decoded one scene at a time (`iter_array`), never held whole: the training file is large.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mamf.data.builders.common import Log
from mamf.data.importers.archive import Archive, basename
from mamf.data.importers.common import Catalogue, Item, read_metadata, run_import
from mamf.system.errors import MamfError

NAME = "clevr-counting"
VERSION = 1
SPLITS = ("train", "val")
FILES = tuple(f"CLEVR_{s}_scenes.json" for s in SPLITS)
_SPACE = re.compile(r"\s*")


def prompt(count: int) -> str:
    return f"An image of {count} objects"


class _Reader:
    """Text read in chunks, with a cursor; `json.JSONDecoder.raw_decode` on the buffer."""

    def __init__(self, stream: IO[bytes], chunk: int):
        self.text = io.TextIOWrapper(stream, encoding="utf-8")
        self.chunk, self.buf, self.pos = chunk, "", 0
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        data = self.text.read(self.chunk)
        if not data:
            return False
        self.buf, self.pos = self.buf[self.pos:] + data, 0
        return True

    def peek(self) -> str:
        """The next non-space character ('' at the end)."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos:self.pos + 1]

    def expect(self, chars: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            raise ValueError(f"expected one of {chars!r}, found {c or 'the end'!r}")
        self.pos += 1
        return c

    def value(self) -> Any:
        """The next complete JSON value (one whose end is followed by more text, or the end)."""
        self.peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
                if end < len(self.buf) or not self._more():
                    self.pos = end
                    return value
            except json.JSONDecodeError:
                if not self._more():
                    raise


def iter_array(stream: IO[bytes], key: str, chunk: int = 1 << 20) -> Iterator[Any]:
    """The items of the array under top-level `key` of a JSON object, decoded one at a time."""
    r = _Reader(stream, chunk)
    r.expect("{")
    if r.peek() == "}":
        raise KeyError(key)
    while True:
        name = r.value()
        r.expect(":")
        if name == key:
            r.expect("[")
            if r.peek() == "]":
                return
            while True:
                yield r.value()
                if r.expect(",]") == "]":
                    return
        r.value()
        if r.expect(",}") == "}":
            raise KeyError(key)


def read_scenes(stream: IO[bytes], path: str) -> list[tuple[str, int]]:
    """(image file name, number of objects) of every scene in a CLEVR scenes file."""
    out = []
    try:
        for scene in iter_array(stream, "scenes"):
            if not isinstance(scene, dict) or not isinstance(scene.get("objects"), list) \
                    or not isinstance(scene.get("image_filename"), str):
                raise MamfError(f"{path}: a scene without image_filename and objects list")
            out.append((scene["image_filename"], len(scene["objects"])))
    except KeyError:
        raise MamfError(f"{path} has no \"scenes\" list") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise MamfError(f"{path} is not valid JSON ({e})") from None
    return out


def read_clevr(archives: list[Archive], log: Log) -> Catalogue:
    def scenes(stream: IO[bytes], path: str) -> list[tuple[str, int]]:
        log(f"{NAME}: reading {path}")
        return read_scenes(stream, path)

    found = read_metadata(archives, FILES, scenes, "CLEVR v1.0 (CLEVR_v1.0.zip or its extracted "
                          "folder)")
    items, per_split = [], {}
    for split, file in zip(SPLITS, FILES):
        per_split[split] = len(found[file])
        items += [Item(key=f"{split}/{basename(name)}", label=str(count), name=basename(name))
                  for name, count in found[file]]
    counts = sorted({int(it.label) for it in items})
    return Catalogue(
        items=items,
        label_to_text={str(n): prompt(n) for n in counts},
        key_depth=2,
        title="CLEVR counting: CLEVR v1.0 images labelled by their number of objects",
        source="CLEVR v1.0 (J. Johnson, B. Hariharan, L. van der Maaten, L. Fei-Fei, C. L. Zitnick "
               "and R. Girshick, \"CLEVR: A Diagnostic Dataset for Compositional Language and "
               "Elementary Visual Reasoning\", CVPR 2017), "
               "https://cs.stanford.edu/people/jcjohns/clevr/.",
        licence="Creative Commons Attribution 4.0 (CC BY 4.0, "
                "https://creativecommons.org/licenses/by/4.0/), as stated in the archive's "
                "LICENSE and scenes files; attribute the authors above. Changes made here: images "
                "regrouped into folders by object count.",
        method="The label of each image is the number of objects in its scene "
               "(`len(objects)` in `scenes/CLEVR_{train,val}_scenes.json`); the label folders are "
               "the counts, the prompt is the paper's \"An image of {x} objects\". The train "
               f"({per_split['train']:,} scenes) and val ({per_split['val']:,}) images are merged "
               "and copied unchanged (PNG).",
        notes="The CLEVR test split (`images/test/`) ships without scenes, so its object counts are "
              "unknown: it is left out.",
    )


def import_clevr_counting(sources, out: str | os.PathLike, *, classes: int | None = None,
                          per_class: int | None = None, seed: int = 0, log: Log = print) -> Path:
    """Import CLEVR v1.0 train and val images, labelled by object count, into `out`."""
    return run_import(NAME, read_clevr, sources, out, classes=classes, per_class=per_class,
                      seed=seed, log=log, version=VERSION)
