"""The data side of the coop and base2novel protocols (`mamf.protocols.coop`): each class's images
split into train/dev/test, from a CoOp split file (`data.split_file`, `split_zhou_<Dataset>.json`)
when one is given, else 60/20/20 in file-name order as under the `paper` protocol
(`mamf.data.splits.per_class_split`); and the K = `data.shots` training images per class the seed
draws.

A folder of CoOp's DATASETS.md (`mamf.data.coop_layouts`) brings its own split, and its shots are
drawn as CoOp draws them: K training and min(K, 4) dev images per class (`coop_layouts.draw`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from mamf.data import coop_layouts
from mamf.data.dataset import ImageDataset
from mamf.data.splits import per_class_split
from mamf.system.errors import MamfError

log = logging.getLogger(__name__)

SPLIT_FILE_KEYS = {"train": "train", "dev": "val", "test": "test"}
SHOTS_STREAM = 104  # the seeded stream that draws the K training shots


def image_split(dataset: ImageDataset, split: str, split_file: str | None) -> list[np.ndarray]:
    """Per class (dataset order), the image indices of `split` (of a CoOp layout: all of it)."""
    if dataset.coop is not None:
        own_split(dataset, split_file)
        return dataset.coop.per_class(dataset.coop.splits[split])
    if split_file:
        return _from_split_file(dataset, Path(split_file))[split]
    return [x[per_class_split(len(x))[split]] for x in dataset.class_images]


def split_file_sha256(split_file: str | None) -> str | None:
    """The split file's sha256 (rows record it: one path may hold other splits later)."""
    if not split_file:
        return None
    try:
        return hashlib.sha256(Path(split_file).read_bytes()).hexdigest()
    except OSError as e:
        raise MamfError(f"split file {split_file} is unreadable: {e.strerror or e}") from None


_PARSED: dict[tuple, dict[str, list[np.ndarray]]] = {}  # (path, sha256, dataset): its splits


def _from_split_file(dataset: ImageDataset, path: Path) -> dict[str, list[np.ndarray]]:
    """CoOp's split file: {"train"|"val"|"test": [[relative path, label, classname], ...]}.
    An entry names an image by `<label folder>/<file>` (its last two path parts). Entries that
    name no image of the folder, and repeats of an entry within a split (they would count one
    image twice), are dropped with one counted warning per file; an image in two splits (a
    method scored on its own training shots) is refused. Parsed once per file content."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise MamfError(f"split file {path} is unreadable: {e.strerror or e}") from None
    key = (str(path), hashlib.sha256(data).hexdigest(), str(dataset.root),
           tuple(dataset.classes), len(dataset.file_names))
    if key not in _PARSED:
        _PARSED.clear()  # one file at a time is enough, and keeps a long process small
        _PARSED[key] = _parse_split_file(dataset, path, data)
    return _PARSED[key]


def _parse_split_file(dataset: ImageDataset, path: Path, data: bytes):
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MamfError(f"split file {path} is unreadable: {e}") from None
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), list)
                                        for k in SPLIT_FILE_KEYS.values()):
        raise MamfError(f"split file {path} must map train, val and test to lists of "
                        "[path, label, classname]")
    where = {}
    for c, images in enumerate(dataset.class_images):
        for i in images:
            where[f"{dataset.classes[c]}/{dataset.file_names[i]}"] = (c, int(i))
    out, missed, repeated, owner = {}, 0, 0, {}
    for split, key in SPLIT_FILE_KEYS.items():
        per_class: list[set[int]] = [set() for _ in dataset.classes]
        for entry in raw[key]:
            hit = _entry_image(entry, where)
            if hit is None:
                missed += 1
                continue
            if hit[1] in per_class[hit[0]]:
                repeated += 1
                continue
            if owner.get(hit[1], split) != split:
                raise MamfError(
                    f"split file {path}: {dataset.classes[hit[0]]}/{dataset.file_names[hit[1]]}"
                    f" is in both {SPLIT_FILE_KEYS[owner[hit[1]]]} and {key} (with "
                    f"{_overlap(raw, where, SPLIT_FILE_KEYS[owner[hit[1]]], key)} image(s) in "
                    "both): a method would be scored on images it trained or was tuned on")
            owner[hit[1]] = split
            per_class[hit[0]].add(hit[1])
        out[split] = [np.array(sorted(x), dtype=np.int64) for x in per_class]
    if missed or repeated:
        log.warning("split file %s: %s dropped", path, " and ".join(
            part for part in (
                f"{missed} entr{'y' if missed == 1 else 'ies'} naming no image of "
                f"{dataset.root}" if missed else "",
                f"{repeated} repeated entr{'y' if repeated == 1 else 'ies'} (an image listed "
                "twice in one split)" if repeated else "") if part))
    return out


def _entry_image(entry, where: dict) -> tuple[int, int] | None:
    """(class, image index) an entry names by its last two path parts; None for none."""
    if not (isinstance(entry, list) and entry and isinstance(entry[0], str)):
        return None
    return where.get("/".join(entry[0].replace("\\", "/").split("/")[-2:]))


def _overlap(raw: dict, where: dict, a: str, b: str) -> int:
    """How many images the splits `a` and `b` of a split file both list."""
    def images(key):
        return {_entry_image(e, where) for e in raw[key]} - {None}
    return len(images(a) & images(b))


def own_split(dataset: ImageDataset, split_file: str | None) -> None:
    """A CoOp layout brings its split: a `data.split_file` beside it would go unread."""
    if split_file:
        raise MamfError(f"{dataset.root} is CoOp's {dataset.coop.layout.name} folder, which "
                        f"brings its own split: drop data.split_file ({split_file})")


def drawn_split(dataset: ImageDataset, data, split: str, seed: int) -> list[np.ndarray]:
    """What the coop protocol's `split` offers per class: the K shots (train), the dev images
    (of a CoOp layout: CoOp's min(K, 4) validation shots) and every test image."""
    if split == "train":
        return training_shots(dataset, data, seed)
    if dataset.coop is not None and split == "dev":
        return dataset.coop.per_class(coop_layouts.draw(dataset.coop, data.shots, seed)["dev"])
    return image_split(dataset, split, data.split_file)


def split_size(dataset: ImageDataset, data, split: str) -> int:
    """How many images `drawn_split` gives for dev or test (the same for every seed)."""
    if dataset.coop is not None and split == "dev":
        return coop_layouts.dev_count(dataset.coop, data.shots)
    return sum(len(x) for x in image_split(dataset, split, data.split_file))


def training_shots(dataset: ImageDataset, data, seed: int) -> list[np.ndarray]:
    """K training images per class drawn by `seed` (all classes; in file order)."""
    if dataset.coop is not None:
        own_split(dataset, data.split_file)
        short = coop_layouts.short_classes(dataset.coop, data.shots)
        if short and not dataset.coop.layout.test_only:
            log.warning("%d class(es) of %s have fewer than %d training images, e.g. %r: all of "
                        "theirs are taken, as CoOp takes them", len(short), dataset.name,
                        data.shots, short[0])
        return dataset.coop.per_class(coop_layouts.draw(dataset.coop, data.shots, seed)["train"])
    train = image_split(dataset, "train", data.split_file)
    rng = np.random.default_rng([seed, SHOTS_STREAM])
    shots = []
    for c, images in enumerate(train):
        if len(images) < data.shots:
            raise MamfError(f"label {dataset.classes[c]!r} has {len(images)} training image(s); "
                            f"the {data.protocol} protocol needs {data.shots} shots")
        shots.append(np.sort(rng.choice(images, size=data.shots, replace=False)))
    return shots
