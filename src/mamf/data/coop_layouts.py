"""The 15 dataset folders of CoOp's DATASETS.md (the field's few-shot benchmark), recognised,
checked and read where and as CoOp's readers read them (docs/benchmark.md).

A folder is one of them when it holds a layout's own files (its split file, FGVCAircraft's
variant files, ImageNet's classnames.txt with its image folders, ...), or carries the layout's
folder name and its image folder. What the layouts are is data (`coop_files/layouts.json`, with
its source); this module only reads them. A recognised folder that lacks something is one clear
line saying what. The draw of K shots per class (`draw_shots`) is Dassl's
`generate_fewshot_dataset` as CoOp calls it: Python's `random` seeded with the seed,
`random.sample` per label in the order the labels first appear, the training split first, then
min(K, 4) validation shots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from mamf.data.folder import IMAGE_EXTENSIONS, printable
from mamf.system.errors import MamfError

log = logging.getLogger(__name__)

FILES = Path(__file__).parent / "coop_files"
SPLITS = ("train", "dev", "test")  # mamf's names; CoOp's "val" is mamf's dev
DEV_SHOTS = 4  # CoOp's validation shots: min(K, 4) per class

# what rows name as their prompts' source when a CoOp folder gave them (`prompts`)
PROMPTS_TAG = "coop"


@dataclass(frozen=True)
class Layout:
    """One dataset folder of DATASETS.md (an entry of layouts.json)."""

    key: str
    name: str  # CoOp's dataset class name (its CUSTOM_TEMPLATES key)
    folder: str  # the folder's name under $DATA
    reader: str
    image_dir: str
    template: str  # CoOp's, with {} for the class name
    markers: tuple[str, ...]
    needs: tuple[str, ...] = ()
    split_file: str | None = None
    numbered: bool = False  # ImageNet-V2: class folders 0..999 in classnames.txt order
    classes: str | None = None  # a file of the wnids the dataset holds (A, R)

    @property
    def test_only(self) -> bool:
        return self.reader == "imagenet_variant"

    def required(self) -> tuple[str, ...]:
        """What the folder must hold."""
        return self.needs or ((self.split_file,) if self.split_file else ()) + \
            (() if self.image_dir == "." else (self.image_dir,))


@cache
def _table() -> dict:
    return json.loads((FILES / "layouts.json").read_text(encoding="utf-8"))


@cache
def layouts() -> tuple[Layout, ...]:
    fields_ = Layout.__dataclass_fields__
    return tuple(Layout(**{k: tuple(v) if isinstance(v, list) else v for k, v in e.items()
                           if k in fields_}) for e in _table()["layouts"])


def benchmark_keys() -> tuple[list[str], list[str]]:
    """The 11 datasets of the few-shot table and the 4 ImageNet variants, in CoOp's order."""
    return list(_table()["benchmark"]), list(_table()["variants"])


def by_key(key: str) -> Layout:
    return next(x for x in layouts() if x.key == key)


def _present(root: Path, name: str) -> bool:
    return (root / name).exists()


# names too common to tell a layout alone (a plain folder may hold a class `images`, or a file
# `classnames.txt`); two of them together do
GENERIC = frozenset({"images", "jpg", ".", "classnames.txt"})


def recognise(root: str | Path) -> Layout | None:
    """The layout `root` has, or None (a plain folder). A layout is a candidate when one of its
    own files is present (one generic name such as images/ or classnames.txt is not enough,
    two are), or when the folder carries its name and its image folder, so that a folder
    missing its split file is told so; the candidate with the most of its files present (its
    name counting one) wins, the first in DATASETS.md's order on a tie."""
    root = Path(root)
    if not root.is_dir():
        return None
    best, score = None, 0
    for layout in layouts():
        present = [m for m in layout.markers if _present(root, m)]
        named = root.resolve().name == layout.folder
        if not any(m not in GENERIC for m in present) and len(present) < 2 and \
                not (named and _present(root, layout.image_dir)):
            continue
        if len(present) + named > score:
            best, score = layout, len(present) + named
    return best


@dataclass
class CoopData:
    """A layout as read: CoOp's class names in label order, every image read, and each split as
    (label, image) pairs in CoOp's order (the order its few-shot draw walks)."""

    layout: Layout
    root: Path
    classes: list[str]
    files: list[Path]
    splits: dict[str, list[tuple[int, int]]]
    wnids: list[str] | None = None  # the ImageNet family: each class's wnid
    sha256: str | None = None  # of what defines the split and the names (split or list files)
    drawn: dict[tuple[int, int], dict[str, list[tuple[int, int]]]] = field(default_factory=dict)

    def per_class(self, pairs: list[tuple[int, int]]) -> list[np.ndarray]:
        out: list[list[int]] = [[] for _ in self.classes]
        for label, i in pairs:
            out[label].append(i)
        return [np.array(sorted(x), dtype=np.int64) for x in out]


def incomplete(root: Path, layout: Layout, what: str) -> MamfError:
    return MamfError(f"{root} is CoOp's {layout.name} folder ({layout.folder}/ in DATASETS.md) "
                     f"but {what}")


def _missing_required(root: Path, layout: Layout) -> list[str]:
    return [n for n in layout.required() if not _present(root, n)]


def read(root: str | Path, layout: Layout, draws=(), check_files: bool = True) -> CoopData:
    """Read `root` as `layout`. `draws`: the (K, seed) pairs a run will use; only ImageNet needs
    them now, since only the images they draw from its 1.28 million training images are read."""
    root = Path(root).expanduser()
    missing = _missing_required(root, layout)
    if missing:
        raise incomplete(root, layout, f"{' and '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} missing")
    reader = {"split_json": _split_json, "fgvc": _fgvc, "imagenet": _imagenet,
              "imagenet_variant": _variant}[layout.reader]
    data = reader(root, layout, tuple(draws))
    absent = [f for f in data.files if not f.is_file()] if check_files else []
    if absent:
        raise incomplete(root, layout, f"{len(absent)} of the {len(data.files)} images its split "
                         f"names are absent, e.g. {printable(str(absent[0]))}")
    return data


def _sha(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _files_in_order(root: Path, rows: dict[str, list[tuple[int, str]]]):
    """Each distinct image path once, in order of first mention; splits as (label, index). An
    image in two splits would score a method on what it trained or was tuned on: refused."""
    index: dict[str, int] = {}
    owner: dict[str, str] = {}
    splits: dict[str, list[tuple[int, int]]] = {}
    for split, entries in rows.items():
        seen, pairs = set(), []
        for label, rel in entries:
            if owner.get(rel, split) != split:
                raise MamfError(f"{root}: {printable(rel)} is in both the {owner[rel]} and the "
                                f"{split} split: a method would be scored on images it trained "
                                "or was tuned on")
            owner[rel] = split
            if rel in seen:
                continue  # listed twice in one split: counted once
            seen.add(rel)
            pairs.append((label, index.setdefault(rel, len(index))))
        splits[split] = pairs
    return list(index), splits


def _split_json(root: Path, layout: Layout, draws) -> CoopData:
    """CoOp's split file: {"train"|"val"|"test": [[path under image_dir, label, class name]]};
    class names from the training entries (Dassl's get_lab2cname), labels 0..N-1."""
    path = root / str(layout.split_file)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise incomplete(root, layout, f"its {path.name} is unreadable ({e})") from None
    if not isinstance(raw, dict) or any(not isinstance(raw.get(k), list)
                                        for k in ("train", "val", "test")):
        raise incomplete(root, layout, f"its {path.name} does not map train, val and test to "
                         "lists of [path, label, class name]")
    names: dict[int, str] = {}
    rows: dict[str, list[tuple[int, str]]] = {}
    for split, key in zip(SPLITS, ("train", "val", "test")):
        rows[split] = []
        for entry in raw[key]:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool)
                    and entry[1] >= 0 and isinstance(entry[2], str)):
                raise incomplete(root, layout, f"its {path.name} has a {key} entry that is not "
                                 f"[path, label, class name]: {str(entry)[:80]}")
            if split == "train" and names.setdefault(entry[1], entry[2]) != entry[2]:
                raise incomplete(root, layout, f"its {path.name} names label {entry[1]} both "
                                 f"{names[entry[1]]!r} and {entry[2]!r}")
            rows[split].append((entry[1], entry[0]))
    n = max(names, default=-1) + 1
    if n == 0 or len(names) != n:
        raise incomplete(root, layout, f"its {path.name} trains on labels that are not 0..N-1")
    stray = [lab for s in ("dev", "test") for lab, _ in rows[s] if lab >= n]
    if stray:
        raise incomplete(root, layout, f"its {path.name} tests label {stray[0]}, which has no "
                         "training image")
    rels, splits = _files_in_order(root, rows)
    base = root if layout.image_dir == "." else root / layout.image_dir
    return CoopData(layout, root, [names[i] for i in range(n)], [base / r for r in rels], splits,
                    sha256=_sha(path))


def _lines(path: Path) -> list[str]:
    try:
        return [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise MamfError(f"{path} is unreadable: {e}") from None


def _fgvc(root: Path, layout: Layout, draws) -> CoopData:
    """FGVCAircraft: class names from variants.txt (label = line), each split file's lines
    `<image id> <variant>`, the image `images/<id>.jpg`."""
    classes = _lines(root / "variants.txt")
    label = {c: i for i, c in enumerate(classes)}
    rows: dict[str, list[tuple[int, str]]] = {}
    for split, name in zip(SPLITS, ("train", "val", "test")):
        rows[split] = []
        for line in _lines(root / f"images_variant_{name}.txt"):
            image, _, variant = line.partition(" ")
            if variant not in label:
                raise incomplete(root, layout, f"images_variant_{name}.txt names the variant "
                                 f"{variant!r}, which variants.txt does not list")
            rows[split].append((label[variant], f"{image}.jpg"))
    rels, splits = _files_in_order(root, rows)
    sources = [root / "variants.txt"] + [root / f"images_variant_{n}.txt"
                                         for n in ("train", "val", "test")]
    return CoopData(layout, root, classes, [root / "images" / r for r in rels], splits,
                    sha256=_sha(*sources))


def read_classnames(root: Path, layout: Layout) -> OrderedDict[str, str]:
    """classnames.txt: `<wnid> <class name>` a line (CoOp's ImageNet.read_classnames)."""
    out: OrderedDict[str, str] = OrderedDict()
    for line in _lines(root / "classnames.txt"):
        wnid, _, name = line.partition(" ")
        out[wnid] = name
    if not out:
        raise incomplete(root, layout, "its classnames.txt is empty")
    return out


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(path: Path) -> list[str]:
    """A class folder's images, sorted by name (CoOp lists them in the file system's order)."""
    return sorted(p.name for p in path.iterdir() if not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _named(root: Path, layout: Layout, names: OrderedDict, folders: list[str]) -> list[str]:
    unnamed = [f for f in folders if f not in names]
    if unnamed:
        raise incomplete(root, layout, f"its classnames.txt has no name for {len(unnamed)} of its "
                         f"class folders, e.g. {printable(unnamed[0])}")
    return [names[f] for f in folders]


def _imagenet(root: Path, layout: Layout, draws) -> CoopData:
    """ImageNet: wnid folders under images/train and images/val (label = sorted position), names
    from classnames.txt. CoOp has no validation split here (it validates on the test set);
    mamf's dev is min(K, 4) further training images per class, drawn after the shots. Only the
    drawn training images are read."""
    names = read_classnames(root, layout)
    train_dir, val_dir = root / "images" / "train", root / "images" / "val"
    folders = _subfolders(train_dir)
    if _subfolders(val_dir) != folders:
        raise incomplete(root, layout, "images/train and images/val hold different class folders")
    classes = _named(root, layout, names, folders)
    train = [(c, f"train/{w}/{n}") for c, w in enumerate(folders) for n in _images(train_dir / w)]
    test = [(c, f"val/{w}/{n}") for c, w in enumerate(folders) for n in _images(val_dir / w)]
    drawn = {}
    for k, seed in sorted(set(draws)):
        rng = random.Random(seed)
        shots = draw_shots(train, k, rng)
        taken = set(shots)
        dev = draw_shots([x for x in train if x not in taken], min(k, DEV_SHOTS), rng)
        drawn[(k, seed)] = {"train": shots, "dev": dev}
    kept = sorted({x for d in drawn.values() for s in d.values() for x in s},
                  key=lambda x: x[1])
    rels, splits = _files_in_order(root, {"train": kept, "dev": [], "test": test})
    position = {rel: i for i, rel in enumerate(rels)}
    data = CoopData(layout, root, classes, [root / "images" / r for r in rels], splits,
                    wnids=folders, sha256=_sha(root / "classnames.txt"))
    data.drawn = {key: {s: [(c, position[rel]) for c, rel in pairs] for s, pairs in d.items()}
                  for key, d in drawn.items()}
    return data


def _wnid_list(name: str) -> list[str]:
    return [x for x in _lines(FILES / name) if not x.startswith("#")]


def _variant(root: Path, layout: Layout, draws) -> CoopData:
    """A test-only ImageNet variant: one folder per class under image_dir, labels in sorted
    folder order (V2: folders 0..999, label i the i-th class of classnames.txt); A and R must
    hold exactly their publishers' 200 classes."""
    names = read_classnames(root, layout)
    base = root / layout.image_dir
    if layout.numbered:
        wnids = list(names)
        folders = [str(i) for i in range(len(wnids))]
        absent = [f for f in folders if not (base / f).is_dir()]
        if absent:
            raise incomplete(root, layout, f"{len(absent)} of its {len(folders)} class folders "
                             f"(0..{len(folders) - 1}) are missing, e.g. {absent[0]}")
    else:
        folders = wnids = _subfolders(base)
        if layout.classes:
            expected = _wnid_list(layout.classes)
            lacking = [w for w in expected if w not in folders]
            extra = [w for w in folders if w not in expected]
            if lacking or extra:
                raise incomplete(root, layout, f"{layout.image_dir}/ holds "
                                 f"{len(folders) - len(extra)} of its {len(expected)} classes"
                                 + (f" (missing e.g. {lacking[0]})" if lacking else "")
                                 + (f" and {len(extra)} folder(s) of none, e.g. "
                                    f"{printable(extra[0])}" if extra else ""))
    classes = _named(root, layout, names, wnids)
    test = [(c, f"{f}/{n}") for c, f in enumerate(folders) for n in _images(base / f)]
    rels, splits = _files_in_order(root, {"train": [], "dev": [], "test": test})
    return CoopData(layout, root, classes, [base / r for r in rels], splits, wnids=list(wnids),
                    sha256=_sha(root / "classnames.txt"))


def draw_shots(pairs: list[tuple[int, int]], k: int, rng: random.Random) -> list[tuple[int, int]]:
    """Dassl's generate_fewshot_dataset (repeat=False): per label, in the order labels first
    appear, `rng.sample` of k of its items in their order; all of them when it has fewer."""
    by_label: dict[int, list] = {}
    for label, item in pairs:
        by_label.setdefault(label, []).append(item)
    out = []
    for label, items in by_label.items():
        chosen = rng.sample(items, k) if len(items) >= k else items
        out += [(label, item) for item in chosen]
    return out


def draw(data: CoopData, k: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """The K training shots and min(K, 4) dev shots per class that CoOp's seed draws."""
    if data.layout.test_only:
        return {"train": [], "dev": []}
    if data.layout.reader == "imagenet":
        if (k, seed) not in data.drawn:
            raise MamfError(f"{data.root}: the {k}-shot draw of seed {seed} was not made when "
                            "ImageNet was read (only its drawn training images are read)")
        return data.drawn[(k, seed)]
    rng = random.Random(seed)
    shots = draw_shots(data.splits["train"], k, rng)
    return {"train": shots, "dev": draw_shots(data.splits["dev"], min(k, DEV_SHOTS), rng)}


def dev_count(data: CoopData, k: int) -> int:
    """How many dev images `draw` gives for K shots, whatever the seed."""
    if data.layout.test_only:
        return 0
    if data.layout.reader == "imagenet":
        drawn = [d["dev"] for (kk, _), d in data.drawn.items() if kk == k]
        if not drawn:
            raise MamfError(f"{data.root}: no {k}-shot draw was made when ImageNet was read")
        return len(drawn[0])
    counts = np.bincount([lab for lab, _ in data.splits["dev"]], minlength=len(data.classes))
    return int(np.minimum(counts, min(k, DEV_SHOTS)).sum())


def short_classes(data: CoopData, k: int, split: str = "train") -> list[str]:
    """Classes with fewer than k images in `split` (CoOp then takes all of them)."""
    if data.layout.reader == "imagenet":
        return []  # its draws are made as it is read, from every training image
    counts = np.bincount([lab for lab, _ in data.splits[split]], minlength=len(data.classes))
    return [data.classes[c] for c in np.flatnonzero(counts < k)]


def count_classes(root: Path, layout: Layout) -> int:
    """How many classes the layout at `root` has, reading as little as can say it."""
    return len(read(root, layout, (), check_files=False).classes) if layout.reader != "imagenet" else \
        len(_subfolders(root / "images" / "train"))


@dataclass
class Survey:
    """What `mamf data check` says of one of the 15 folders."""

    layout: Layout
    path: Path
    state: str  # "ok", "absent", "incomplete" or "unreadable"
    detail: str = ""
    classes: int = 0
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # split: (present, named)


def survey(root: str | Path) -> list[Survey]:
    """Each of the 15 layouts under the data root `root` (or `root` alone, when it is one):
    present, complete (every image its split names on disk) and readable (each such image's
    header opens). ImageNet's training images are counted, not opened (1.28 million)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MamfError(f"data folder {root} does not exist")
    alone = recognise(root)
    targets = [(alone, root)] if alone else [(x, root / x.folder) for x in layouts()]
    return [_survey_one(layout, path) for layout, path in targets]


def _survey_one(layout: Layout, path: Path) -> Survey:
    from PIL import Image, UnidentifiedImageError

    if not path.is_dir():
        return Survey(layout, path, "absent")
    try:
        data = read(path, layout, (), check_files=False)
    except MamfError as e:
        return Survey(layout, path, "incomplete", str(e))
    out = Survey(layout, path, "ok", classes=len(data.classes))
    absent, unreadable = [], []
    for split, pairs in data.splits.items():
        files = [data.files[i] for _, i in pairs]
        here = [f for f in files if f.is_file()]
        absent += [f for f in files if not f.is_file()]
        out.counts[split] = (len(here), len(files))
        for f in here:
            try:
                with Image.open(f):
                    pass
            except (OSError, UnidentifiedImageError, ValueError):
                unreadable.append(f)
    if layout.reader == "imagenet":
        train = path / "images" / "train"
        n = sum(len(_images(train / w)) for w in data.wnids or [])
        out.counts["train"] = (n, n)
    if absent:
        out.state = "incomplete"
        out.detail = (f"{len(absent)} image(s) its split names are absent, e.g. "
                      f"{printable(str(absent[0]))}")
    elif unreadable:
        out.state = "unreadable"
        out.detail = (f"{len(unreadable)} image(s) do not open as images, e.g. "
                      f"{printable(str(unreadable[0]))}")
    return out


def survey_lines(results: list[Survey]) -> list[str]:
    """`mamf data check`'s table: one line a dataset, then what is wrong, one line each."""
    lines = [f"{'dataset':<21}{'folder':<24}{'state':<12}{'classes':>8}{'train':>18}"
             f"{'dev':>14}{'test':>16}"]
    for s in results:
        found = [f"{s.counts[k][0]}/{s.counts[k][1]}" if k in s.counts and s.counts[k][1]
                 else "-" for k in SPLITS]  # images found / expected, per split
        lines.append(f"{s.layout.name:<21}{s.layout.folder + '/':<24}{s.state:<12}"
                     f"{s.classes or '-':>8}{found[0]:>18}{found[1]:>14}{found[2]:>16}")
    for s in results:
        if s.detail:
            lines.append(f"{s.layout.name}: {s.detail}")
    ok = sum(s.state == "ok" for s in results)
    lines.append(f"{ok} of {len(results)} ready (images present / named by the split; "
                 "ImageNet's dev is drawn from its training images, CoOp's variants are "
                 "test-only)")
    return lines
