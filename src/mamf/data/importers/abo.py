"""ABO material from `abo-listings.tar` and `abo-images-small.tar`, or their extracted folders.

Expected layout, as documented in the README of Amazon Berkeley Objects
(https://amazon-berkeley-objects.s3.amazonaws.com/index.html):

    listings/metadata/listings_<0-9a-f>.json.gz   gzipped JSON lines, one product listing a line:
        {"item_id", "main_image_id", "material": [{"language_tag": "en_US", "value": "Wood"}], ...}
    images/metadata/images.csv.gz                 image_id,height,width,path
    images/small/<path>                           e.g. images/small/14/14fe8812.jpg (256 px max)

Pass both archives (`--from` twice), or one folder holding both. The label of a listing is its
material, read from the English (`en_*`) entries: lower-cased, and kept only when there is exactly
one (a product of a single material). Its main image is the image imported; an image that two
listings give different materials is left out.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from pathlib import Path
from typing import IO

from mamf.data.builders.common import Log, unique_slugs
from mamf.data.importers.archive import READ_ERRORS, Archive, basename, tail
from mamf.data.importers.common import Catalogue, Item, require, run_import
from mamf.system.errors import MamfError

NAME = "abo-material"
VERSION = 1
IMAGES_CSV = "images.csv.gz"
_LISTINGS = re.compile(r"listings_[0-9a-f]+\.json\.gz")
ALL_SHARDS = {f"listings_{i:x}.json.gz" for i in range(16)}  # the README's 16 files: stop there
_SPACES = re.compile(r"\s+")


def prompt(material: str) -> str:
    return f"A photo of a product made of {material}"


def english_materials(listing: dict) -> set[str]:
    """The listing's English material values, lower-cased with spaces collapsed."""
    out = set()
    for entry in listing.get("material") or []:
        if isinstance(entry, dict) and str(entry.get("language_tag", "")).startswith("en") \
                and isinstance(entry.get("value"), str):
            value = _SPACES.sub(" ", entry["value"]).strip().lower()
            if value:
                out.add(value)
    return out


def _is_metadata(path: str) -> bool:
    name = basename(path)
    return name == IMAGES_CSV or _LISTINGS.fullmatch(name) is not None


def _image_paths(text: IO[str], where: str) -> dict[str, str]:
    rows = csv.DictReader(text)
    if not {"image_id", "path"} <= set(rows.fieldnames or ()):
        raise MamfError(f"{where} has no image_id and path columns")
    return {r["image_id"]: r["path"] for r in rows}


def _read_listings(text: IO[str], material_of: dict[str, str | None],
                   reasons: dict[str, int]) -> int:
    """Record the material of each single-material listing's main image; the listings read."""
    n = 0
    for line in text:
        if not line.strip():
            continue
        listing = json.loads(line)
        n += 1
        materials = english_materials(listing)
        image = listing.get("main_image_id")
        if not materials:
            reasons["listings without an English material"] += 1
        elif len(materials) > 1:
            reasons["listings of several materials"] += 1
        elif not image:
            reasons["listings without a main image"] += 1
        else:
            (material,) = materials
            if material_of.setdefault(image, material) != material:
                material_of[image] = None  # two listings, two materials: ambiguous
    return n


def read_abo(archives: list[Archive], log: Log) -> Catalogue:
    paths: dict[str, str] = {}               # image_id -> path under images/small/
    material_of: dict[str, str | None] = {}  # main image id -> material (None: conflicting)
    reasons = {"listings without an English material": 0,
               "listings of several materials": 0, "listings without a main image": 0}
    n_listings, found_csv, shards = 0, False, set()
    for archive in archives:
        for path, stream in archive.members(_is_metadata):
            try:
                text = io.TextIOWrapper(gzip.GzipFile(fileobj=stream), encoding="utf-8")
                if basename(path) == IMAGES_CSV:
                    paths.update(_image_paths(text, path))
                    found_csv = True
                else:
                    n_listings += _read_listings(text, material_of, reasons)
                    shards.add(basename(path))
            except (*READ_ERRORS, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
                raise MamfError(f"{path} in {archive.path} is damaged ({type(e).__name__}: {e})") \
                    from None
            if found_csv and shards >= ALL_SHARDS:
                break
        if found_csv and shards >= ALL_SHARDS:
            break
    n_files = len(shards)
    found = (["listings/metadata/listings_*.json.gz"] if n_files else []) \
        + ([f"images/metadata/{IMAGES_CSV}"] if found_csv else [])
    require(found, ["listings/metadata/listings_*.json.gz", f"images/metadata/{IMAGES_CSV}"],
            archives, "Amazon Berkeley Objects (abo-listings.tar and abo-images-small.tar, or "
            "their extracted folders)")
    conflicting = sum(1 for m in material_of.values() if m is None)
    unlisted = sum(1 for i, m in material_of.items() if m is not None and i not in paths)
    chosen = {i: m for i, m in material_of.items() if m is not None and i in paths}
    if not chosen:
        raise MamfError("no ABO listing has a single English material and a main image in "
                        f"{IMAGES_CSV}")
    materials = sorted(set(chosen.values()))
    slugs = dict(zip(materials, unique_slugs(materials)))
    items = [Item(key=tail(paths[i], 2), label=slugs[m], name=basename(paths[i]))
             for i, m in sorted(chosen.items())]
    return Catalogue(
        items=items,
        label_to_text={slugs[m]: prompt(m) for m in materials},
        key_depth=2,
        title="ABO material: Amazon Berkeley Objects product images by material",
        source="Amazon Berkeley Objects (J. Collins, S. Goel, K. Deng, A. Luthra, L. Xu, "
               "E. Gundogdu, X. Zhang, T. F. Yago Vicente, T. Dideriksen, H. Arora, "
               "M. Guillaumin and J. Malik, CVPR 2022), "
               "https://amazon-berkeley-objects.s3.amazonaws.com/index.html: the listings "
               "metadata and the downscaled catalog images (abo-images-small).",
        licence="Amazon Berkeley Objects (c) Amazon.com, under Creative Commons Attribution 4.0 "
                "(CC BY 4.0, https://creativecommons.org/licenses/by/4.0/) in its current "
                "release; earlier releases were CC BY-NC 4.0, and the licence file in your "
                "download is the one that applies. Credit Amazon.com for the data and M. "
                "Guillaumin, T. Dideriksen, K. Deng, H. Arora, J. Collins and J. Malik for "
                "building the data set. Changes made here: images regrouped by material.",
        method=f"{n_listings:,} listings in {n_files} listings files were read. A listing's "
               "material is the set of its English (`language_tag` en_*) `material` values, "
               "lower-cased with spaces collapsed; listings with exactly one are kept and their "
               "`main_image_id` is the image, found through `images/metadata/images.csv.gz` "
               f"under `images/small/` ({len(chosen):,} images of {len(materials):,} materials). "
               "The label folder is the material made path-safe; `label_to_text.json` gives the "
               "prompt \"A photo of a product made of {material}\". Images are copied unchanged.",
        dropped={**reasons, "images that listings give different materials": conflicting,
                 "main images missing from images.csv.gz": unlisted},
    )


def import_abo_material(sources, out: str | os.PathLike, *, classes: int | None = None,
                        per_class: int | None = None, seed: int = 0, log: Log = print) -> Path:
    """Import ABO product images labelled by their single material into `out`."""
    return run_import(NAME, read_abo, sources, out, classes=classes, per_class=per_class,
                      seed=seed, log=log, version=VERSION)
