"""What every importer shares: input identity, the subset choice, copying images, DATASET.md.

An importer reads its dataset's metadata from the inputs (pass 1) and returns a `Catalogue`: every
labelled image it could import, keyed by the last `key_depth` components of the member path that
holds it (so the same catalogue matches the archive and its extracted folder, whatever folder the
user points at). `run_import` then chooses the subset, streams the inputs once more (pass 2) and
writes only the chosen images, through the builders' staging and atomic finish.

Idempotency: the manifest records each input's sha256 (and its path, size and mtime, so that a
rerun on the untouched file needs no hashing). The same inputs and options again do nothing;
other inputs into a folder that already holds this dataset are refused.
"""

from __future__ import annotations

import io
import json
import os
import random
import shlex
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from PIL import Image

from mamf.data.builders.common import (
    BuiltDataset,
    Log,
    build_with,
    check_int,
    read_manifest,
    resolve_out,
)
from mamf.data.importers.archive import READ_ERRORS, Archive, basename, tail
from mamf.system.errors import MamfError

ImageBox = tuple[float, float, float, float]  # x, y, width, height in pixels


@dataclass(frozen=True)
class Item:
    """One labelled image: where it is (`key`), its class folder and its file name there."""

    key: str
    label: str
    name: str
    box: ImageBox | None = None  # crop to this box when given


@dataclass
class Catalogue:
    """What an importer found in the metadata, and how to describe the result."""

    items: list[Item]
    label_to_text: dict[str, str]
    key_depth: int
    title: str
    source: str
    licence: str
    method: str
    notes: str = ""
    dropped: dict[str, int] = field(default_factory=dict)  # what the importer left out -> how many


Reader = Callable[[list[Archive], Log], Catalogue]


def open_inputs(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Archive]:
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    archives = [Archive(s) for s in sources]
    if not archives:
        raise MamfError("no input given: pass --from PATH (the archive or its extracted folder)")
    return archives


def require(found: Iterable[str], needed: Iterable[str], archives: list[Archive], what: str) -> None:
    """A MamfError naming every needed metadata file that was not found in the inputs."""
    found = set(found)
    missing = [n for n in needed if n not in found]
    if missing:
        inputs = ", ".join(str(a.path) for a in archives)
        raise MamfError(f"{inputs} is not {what}: no {', '.join(missing)} found")


def read_metadata(archives: list[Archive], names: tuple[str, ...],
                  parse: Callable[[IO[bytes], str], Any], what: str) -> dict[str, Any]:
    """`parse(stream, path)` of the first member with each file name in `names`, by name.

    Reading stops once all are found; a missing one is a MamfError naming it and `what` the
    inputs should have been, a damaged one a MamfError naming it.
    """
    found: dict[str, Any] = {}
    for archive in archives:
        for path, stream in archive.members(lambda p: basename(p) in names
                                            and basename(p) not in found):
            try:
                found[basename(path)] = parse(stream, path)
            except (*READ_ERRORS, UnicodeDecodeError) as e:
                raise MamfError(f"{path} in {archive.path} is damaged ({type(e).__name__}: {e})") \
                    from None
            if len(found) == len(names):
                return found
    require(found, names, archives, what)
    return found


def read_json(stream, where: str) -> Any:
    try:
        return json.load(io.TextIOWrapper(stream, encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MamfError(f"{where} is not valid JSON ({e})") from None


def choose(items: list[Item], classes: int | None, per_class: int | None, seed: int,
           name: str) -> tuple[list[Item], str]:
    """The subset and a sentence saying how it was chosen.

    Classes with at least `per_class` images are eligible; `classes` of them are drawn at random,
    then `per_class` images of each. Each draw has its own generator seeded by the dataset name,
    `seed` and (for images) the class, so a class's images do not depend on which other classes
    were drawn. Without `classes` every eligible class is kept; without `per_class` every image.
    """
    by_label: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    eligible = sorted(k for k, v in by_label.items() if per_class is None or len(v) >= per_class)
    if not eligible:
        raise MamfError(f"{name}: no class has {per_class} images; lower --per-class")
    if classes is not None and classes > len(eligible):
        more = f" with at least {per_class} images" if per_class is not None else ""
        raise MamfError(f"{name}: --classes {classes} asks for more than the {len(eligible)} "
                        f"classes{more}")
    chosen = eligible
    if classes is not None:
        chosen = sorted(random.Random(f"mamf-import/{name}/{seed}/classes").sample(eligible, classes))
    subset = []
    for label in chosen:
        pool = sorted(by_label[label], key=lambda it: (it.name, it.key))
        if per_class is not None:
            pool = sorted(random.Random(f"mamf-import/{name}/{seed}/{label}").sample(pool, per_class),
                          key=lambda it: (it.name, it.key))
        subset += pool
    total = len(by_label)
    at_least = f" with at least {per_class} images" if per_class is not None else ""
    if classes is not None:
        which = (f"{classes} of the {total} classes{at_least}"
                 + (f" ({len(eligible)} eligible)" if per_class is not None else "")
                 + f", drawn at random with seed {seed}")
    elif per_class is not None:
        which = f"the {len(eligible)} of the {total} classes{at_least}"
    else:
        which = f"all {total} classes"
    how = which + ("; " + f"{per_class} images of each, drawn at random with seed {seed}"
                   if per_class is not None else ", all their images") + "."
    return subset, how


def checked_items(cat: Catalogue, name: str) -> list[Item]:
    """The catalogue's items, each image once; an image listed under two classes is left out."""
    unsafe = [label for label in cat.label_to_text
              if not label or label != _safe_name(label)]
    if unsafe:
        raise MamfError(f"{name}: class {unsafe[0]!r} cannot be a folder name")
    labels: dict[str, set[str]] = defaultdict(set)
    for item in cat.items:
        if item.label not in cat.label_to_text:
            raise RuntimeError(f"{name}: item {item.key} has a label without a prompt")
        labels[item.key].add(item.label)
    twice = {key for key, found in labels.items() if len(found) > 1}
    if twice:
        cat.dropped["images listed under two classes"] = len(twice)
    seen: set[str] = set()
    items = []
    for item in cat.items:
        if item.key not in twice and item.key not in seen:
            seen.add(item.key)
            items.append(item)
    if not items:
        raise MamfError(f"{name}: the metadata lists no images")
    return items


def _decode(data: bytes, box: ImageBox | None, name: str) -> bytes:
    """The image bytes to write (cropped and re-encoded when a box is given); raises on damage."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if box is None:
            return data
        x, y, w, h = box
        left, top = max(0, int(round(x))), max(0, int(round(y)))
        right, bottom = min(im.width, int(round(x + w))), min(im.height, int(round(y + h)))
        if right <= left or bottom <= top:
            raise ValueError(f"box {box} lies outside the {im.width}x{im.height} image")
        crop = im.crop((left, top, right, bottom))
        if crop.mode not in ("RGB", "L"):
            crop = crop.convert("RGB")
        out = io.BytesIO()
        if name.lower().endswith((".jpg", ".jpeg")):
            crop.save(out, format="JPEG", quality=95)
        else:
            crop.save(out, format="PNG")
        return out.getvalue()


def _safe_name(name: str) -> str:
    name = name.replace("/", "_").replace("\\", "_").strip()
    return name if name and not name.startswith(".") else f"_{name}"


MAX_IMAGE_BYTES = 64 << 20  # a member listed as an image but larger is skipped as damaged


def copy_images(archives: list[Archive], subset: list[Item], key_depth: int, tmp: Path,
                log: Log) -> tuple[Counter, list[str]]:
    """Stream the inputs once, writing each chosen image; (counts by outcome, corrupt examples).
    At most MAX_IMAGE_BYTES of a member are read: a larger one is counted as damaged
    (`too_large` among them) and skipped, its memory bounded."""
    wanted = {item.key: item for item in subset}
    counts: Counter = Counter()
    corrupt: list[str] = []
    for label in {item.label for item in subset}:
        (tmp / label).mkdir()
    for archive in archives:
        for path, stream in archive.members(lambda p: tail(p, key_depth) in wanted):
            item = wanted.pop(tail(path, key_depth))
            data = stream.read(MAX_IMAGE_BYTES + 1)  # never a huge member whole into memory
            if len(data) > MAX_IMAGE_BYTES:
                counts["corrupt"] += 1
                counts["too_large"] += 1
                if len(corrupt) < 5:
                    corrupt.append(f"{path} (over {MAX_IMAGE_BYTES / 2**20:g} MiB)")
                continue
            try:
                data = _decode(data, item.box, item.name)
            except (*READ_ERRORS, ValueError, Image.DecompressionBombError) as e:
                counts["corrupt"] += 1
                if len(corrupt) < 5:
                    corrupt.append(f"{path} ({type(e).__name__})")
                continue
            (tmp / item.label / _safe_name(item.name)).write_bytes(data)
            counts["written"] += 1
            if counts["written"] % 5000 == 0:
                log(f"{counts['written']} of {len(subset)} images written")
            if not wanted:
                break
        if not wanted:
            break
    counts["missing"] = len(wanted)
    for label in {item.label for item in subset}:
        if not any((tmp / label).iterdir()):
            (tmp / label).rmdir()
    return counts, corrupt


def _input_digests(archives: list[Archive], previous: list[dict], log: Log,
                   name: str) -> list[dict]:
    """Each input's fingerprint and sha256, reusing the recorded sha256 of an untouched file."""
    known = {json.dumps({k: v for k, v in p.items() if k != "sha256"}, sort_keys=True): p["sha256"]
             for p in previous if isinstance(p, dict) and "sha256" in p}
    out = []
    for a in archives:
        fp = a.fingerprint()
        sha = known.get(json.dumps(fp, sort_keys=True)) if a.kind != "folder" else None
        if sha is None:
            log(f"{name}: computing the sha256 of {a.path}")
            sha = a.sha256()
        out.append({**fp, "sha256": sha})
    return out


def _refuse_other_input(out: Path, name: str, manifest: dict | None, inputs: list[dict]) -> None:
    if manifest is None or manifest.get("builder") != name:
        return
    before = manifest.get("inputs")
    if isinstance(before, list) and sorted(i.get("sha256", "") for i in before if isinstance(i, dict)) \
            != sorted(i["sha256"] for i in inputs):
        paths = ", ".join(str(i.get("path")) for i in before if isinstance(i, dict))
        raise MamfError(f"{out} already holds {name} imported from {paths}; another input goes "
                        "into another folder (or remove this one)")


def _describe_inputs(inputs: list[dict]) -> str:
    lines = []
    for i in inputs:
        what = ("sha256 of its listing (every file's path and size)" if i["kind"] == "folder"
                else f"{i['kind']}, {i['size']:,} bytes, sha256")
        lines.append(f"- `{Path(i['path']).name}` ({what} `{i['sha256']}`)")
    return "\n".join(lines)


def run_import(name: str, read: Reader, sources, out: str | os.PathLike, *, classes: int | None,
               per_class: int | None, seed: int, log: Log, version: int = 1,
               extra_options: dict[str, Any] | None = None,
               adjust: Callable[[list[Item]], list[Item]] | None = None) -> Path:
    """Import dataset `name` from `sources` into `out`; returns the dataset root.

    `read` is the importer's pass 1; `adjust` may change the chosen items (e.g. drop their crop
    boxes); `extra_options` are the importer's own options, recorded like the subset choice.
    """
    check_int(name, "classes", classes, allow_none=True)
    check_int(name, "per_class", per_class, allow_none=True)
    check_int(name, "seed", seed, minimum=-(2**63))
    archives = open_inputs(sources)
    root = resolve_out(out)
    manifest = read_manifest(root) if root.is_dir() else None
    previous = manifest.get("inputs", []) if manifest and manifest.get("builder") == name else []
    inputs = _input_digests(archives, previous if isinstance(previous, list) else [], log, name)
    _refuse_other_input(root, name, manifest, inputs)
    options = {"classes": classes, "per_class": per_class, "seed": seed, **(extra_options or {})}
    flags = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
             for k, v in options.items() if v is not None and v is not False]
    rebuild = shlex.join(["mamf", "data", name, *[f"--from={i['path']}" for i in inputs],
                          f"--out={root}", *flags])

    def make(tmp: Path) -> BuiltDataset:
        log(f"{name}: reading the metadata of {', '.join(a.path.name for a in archives)}")
        # Small inputs first: metadata usually sits in the smaller archive (fungi, abo-material).
        cat = read(sorted(archives, key=lambda a: a.fingerprint().get("size", 0)), log)
        items = checked_items(cat, name)
        subset, how = choose(items, classes, per_class, seed, name)
        if adjust is not None:
            subset = adjust(subset)
        log(f"{name}: {how[:-1]}; copying {len(subset)} images")
        counts, corrupt = copy_images(archives, subset, cat.key_depth, tmp, log)
        if not counts["written"]:
            raise MamfError(f"{name}: none of the {len(subset)} chosen images could be read from "
                            f"the inputs ({counts['corrupt']} damaged, {counts['missing']} not found)")
        if counts["corrupt"] or counts["missing"]:
            large = f" ({counts['too_large']} over {MAX_IMAGE_BYTES / 2**20:g} MiB)" \
                if counts["too_large"] else ""
            log(f"{name}: skipped {counts['corrupt']} damaged{large} and {counts['missing']} "
                "missing images")
        labels = {p.name for p in tmp.iterdir() if p.is_dir()}
        dropped = ", ".join(f"{n:,} {reason}" for reason, n in cat.dropped.items() if n)
        dropped = f" Left out: {dropped}." if dropped else ""
        outcome = (f"{counts['written']:,} of the {len(subset):,} chosen images were written; "
                   f"{counts['corrupt']} could not be decoded and were skipped"
                   + (f" (e.g. {', '.join(corrupt)})" if corrupt else "")
                   + f"; {counts['missing']} listed in the metadata were not found in the inputs.")
        return BuiltDataset(
            title=cat.title,
            label_to_text={k: v for k, v in cat.label_to_text.items() if k in labels},
            source=f"{cat.source.strip()}\n\nRead from:\n\n{_describe_inputs(inputs)}",
            licence=cat.licence,
            method=f"{cat.method.strip()}{dropped}\n\nSubset: {how[0].upper()}{how[1:]} {outcome}",
            notes=cat.notes,
            extra={"inputs": inputs, "images_corrupt": counts["corrupt"],
                   "images_missing": counts["missing"]},
            rebuild=rebuild,
        )

    return build_with(name, root, options, log, make, version=version)
