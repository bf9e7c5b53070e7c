"""Miniature replicas of the 15 dataset folders of CoOp's DATASETS.md, built by the tests: a few
generated JPEGs per class under the real folder and file names, split files in CoOp's JSON shape
([path under the image folder, label, class name], as its save_split writes them), FGVCAircraft's
variant files, ImageNet's classnames.txt and wnid folders, ImageNet-V2's numbered folders, and
ImageNet-A and -R with exactly their publishers' 200 classes.

Class names and their order follow CoOp's readers: Caltech101 sorted by folder with
BACKGROUND_Google and Faces_easy left out and four names cleaned (Faces -> face, ...), OxfordPets'
lower-case breeds, StanfordCars' year-first names, SUN397's "outdoor apartment_building",
EuroSAT's "Annual Crop Land", UCF101's "Apply_Eye_Makeup".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from mamf.data import coop_layouts

TRAIN, VAL, TEST = 5, 2, 3  # images per class in each split of the split-file datasets


def jpeg(path: Path, label: int, k: int) -> None:
    """A small JPEG whose colour says its class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([label, k])
    base = np.array([(label * 67) % 256, (label * 131 + 80) % 256, (label * 29 + 160) % 256])
    img = np.clip(base + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format="JPEG")


def split_json(root: Path, image_dir: str, split_file: str, classes: list[tuple[str, str]],
               name_of=lambda folder, i: f"{folder}/{i:04d}.jpg", interleave: bool = False):
    """Images under root/image_dir, and the split file naming them. `classes`: (folder, CoOp
    name) in label order. `interleave`: the training entries alternate between labels (the
    order of first appearance is then not the label order)."""
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    counter = 0
    for label, (folder, name) in enumerate(classes):
        for key, n in (("train", TRAIN), ("val", VAL), ("test", TEST)):
            for _ in range(n):
                counter += 1
                rel = name_of(folder, counter)
                jpeg(root / image_dir / rel, label, counter)
                split[key].append([rel, label, name])
    if interleave:
        split["train"] = sorted(split["train"], key=lambda e: (split["train"].index(e) % TRAIN,
                                                                -e[1]))
    (root / split_file).write_text(json.dumps(split, indent=4), encoding="utf-8")
    return split


IMAGENET = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
            ("n01491361", "tiger shark")]


def wnid_list(name: str) -> list[str]:
    return [x for x in (coop_layouts.FILES / name).read_text().splitlines()
            if x and not x.startswith("#")]


def classnames_text(extra: list[str] = ()) -> str:
    """classnames.txt as DATASETS.md's download holds it: `<wnid> <name>` a line, sorted."""
    names = dict(IMAGENET)
    for w in extra:
        names.setdefault(w, f"class {w}")
    return "".join(f"{w} {names[w]}\n" for w in sorted(names))


def build_all(data: Path) -> Path:
    """Every layout under `data`, as DATASETS.md lays them out."""
    for builder in BUILDERS.values():
        builder(data)
    return data


def caltech(data: Path) -> Path:
    root = data / "caltech-101"
    for junk in ("BACKGROUND_Google", "Faces_easy"):  # on disk, in no split (CoOp ignores them)
        jpeg(root / "101_ObjectCategories" / junk / "image_0001.jpg", 99, 0)
    split_json(root, "101_ObjectCategories", "split_zhou_Caltech101.json",
               [("Faces", "face"), ("Leopards", "leopard"), ("accordion", "accordion"),
                ("airplanes", "airplane")],
               name_of=lambda f, i: f"{f}/image_{i:04d}.jpg")
    return root


def pets(data: Path) -> Path:
    root = data / "oxford_pets"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    breeds = [("Abyssinian", "abyssinian"), ("american_bulldog", "american_bulldog"),
              ("Bengal", "bengal")]
    split_json(root, "images", "split_zhou_OxfordPets.json", breeds,
               name_of=lambda f, i: f"{f}_{i}.jpg", interleave=True)
    return root


def cars(data: Path) -> Path:
    root = data / "stanford_cars"
    (root / "devkit").mkdir(parents=True, exist_ok=True)
    classes = [("a", "2012 Audi TTS Coupe"), ("b", "2012 BMW M3 coupe"),
               ("c", "2007 Chevrolet Express Van")]
    def name_of(_, i):
        return f"cars_{'train' if (i - 1) % (TRAIN + VAL + TEST) < TRAIN + VAL else 'test'}/" \
            f"{i:05d}.jpg"

    split_json(root, ".", "split_zhou_StanfordCars.json", classes, name_of=name_of)
    return root


def flowers(data: Path) -> Path:
    root = data / "oxford_flowers"
    root.mkdir(parents=True, exist_ok=True)
    (root / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose",
                                                       "2": "hard-leaved pocket orchid",
                                                       "3": "canterbury bells"}))
    (root / "imagelabels.mat").write_bytes(b"")
    split_json(root, "jpg", "split_zhou_OxfordFlowers.json",
               [("1", "pink primrose"), ("2", "hard-leaved pocket orchid"),
                ("3", "canterbury bells")], name_of=lambda f, i: f"image_{i:05d}.jpg")
    return root


def food(data: Path) -> Path:
    root = data / "food-101"
    (root / "meta").mkdir(parents=True, exist_ok=True)
    split_json(root, "images", "split_zhou_Food101.json",
               [("apple_pie", "apple_pie"), ("baby_back_ribs", "baby_back_ribs"),
                ("baklava", "baklava")], name_of=lambda f, i: f"{f}/{1000000 + i}.jpg")
    return root


def aircraft(data: Path) -> Path:
    """FGVCAircraft's data/ folder renamed: variants.txt and images_variant_*.txt."""
    root = data / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    root.mkdir(parents=True, exist_ok=True)
    (root / "variants.txt").write_text("".join(v + "\n" for v in variants))
    (root / "families.txt").write_text("Boeing 707\n")
    counter = 1000000
    for split, n in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        lines = []
        for label, v in enumerate(variants):
            for _ in range(n):
                counter += 1
                jpeg(root / "images" / f"{counter:07d}.jpg", label, counter)
                lines.append(f"{counter:07d} {v}\n")
        (root / f"images_variant_{split}.txt").write_text("".join(lines))
    return root


def sun(data: Path) -> Path:
    root = data / "sun397"
    (root / "ClassName.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "ClassName.txt").write_text("/a/abbey\n/a/apartment_building/outdoor\n/b/bakery/shop\n")
    split_json(root, "SUN397", "split_zhou_SUN397.json",
               [("a/abbey", "abbey"), ("a/apartment_building/outdoor",
                                       "outdoor apartment_building"),
                ("b/bakery/shop", "shop bakery")], name_of=lambda f, i: f"{f}/sun_{i:08d}.jpg")
    return root


def dtd(data: Path) -> Path:
    root = data / "dtd"
    for d in ("imdb", "labels"):
        (root / d).mkdir(parents=True, exist_ok=True)
    split_json(root, "images", "split_zhou_DescribableTextures.json",
               [("banded", "banded"), ("blotchy", "blotchy"), ("braided", "braided")],
               name_of=lambda f, i: f"{f}/{f}_{i:04d}.jpg")
    return root


def eurosat(data: Path) -> Path:
    root = data / "eurosat"
    split_json(root, "2750", "split_zhou_EuroSAT.json",
               [("AnnualCrop", "Annual Crop Land"), ("Forest", "Forest"),
                ("HerbaceousVegetation", "Herbaceous Vegetation Land")],
               name_of=lambda f, i: f"{f}/{f}_{i}.jpg")
    return root


def ucf(data: Path) -> Path:
    root = data / "ucf101"
    split_json(root, "UCF-101-midframes", "split_zhou_UCF101.json",
               [("Apply_Eye_Makeup", "Apply_Eye_Makeup"), ("Archery", "Archery"),
                ("Baby_Crawling", "Baby_Crawling")],
               name_of=lambda f, i: f"{f}/v_{f.replace('_', '')}_g{i:02d}_c01.jpg")
    return root


IMAGENET_TRAIN, IMAGENET_VAL = 12, 3


def imagenet(data: Path) -> Path:
    root = data / "imagenet"
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text(classnames_text())
    k = 0
    for label, (wnid, _) in enumerate(IMAGENET):
        for i in range(IMAGENET_TRAIN):
            k += 1
            jpeg(root / "images" / "train" / wnid / f"{wnid}_{i + 1}.JPEG", label, k)
        for _ in range(IMAGENET_VAL):
            k += 1
            jpeg(root / "images" / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", label, k)
    return root


def imagenetv2(data: Path) -> Path:
    """Folders 0..N-1: class i is the i-th line of classnames.txt (here a short one)."""
    root = data / "imagenetv2"
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text(classnames_text())
    for label in range(len(IMAGENET)):
        for i in range(2):
            jpeg(root / "imagenetv2-matched-frequency-format-val" / str(label) / f"{i}abc.jpeg",
                 label, 500 + i)
    return root


def sketch(data: Path) -> Path:
    root = data / "imagenet-sketch"
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text(classnames_text())
    for label, (wnid, _) in enumerate(IMAGENET):
        for i in range(2):
            jpeg(root / "images" / wnid / f"sketch_{i}.JPEG", label, 600 + i)
    return root


def _two_hundred(data: Path, folder: str, image_dir: str, wnids_file: str) -> Path:
    root = data / folder
    wnids = wnid_list(wnids_file)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / image_dir / "README.txt").write_text("not a class\n")
    (root / "classnames.txt").write_text(classnames_text(wnids))
    for label, w in enumerate(wnids):
        jpeg(root / image_dir / w / f"{w}_0.jpg", label, 700)
    return root


def imagenet_a(data: Path) -> Path:
    return _two_hundred(data, "imagenet-adversarial", "imagenet-a", "imagenet_a_wnids.txt")


def imagenet_r(data: Path) -> Path:
    return _two_hundred(data, "imagenet-rendition", "imagenet-r", "imagenet_r_wnids.txt")


BUILDERS = {"imagenet": imagenet, "caltech101": caltech, "oxford_pets": pets,
            "stanford_cars": cars, "oxford_flowers": flowers, "food101": food,
            "fgvc_aircraft": aircraft, "sun397": sun, "dtd": dtd, "eurosat": eurosat,
            "ucf101": ucf, "imagenetv2": imagenetv2, "imagenet_sketch": sketch,
            "imagenet_a": imagenet_a, "imagenet_r": imagenet_r}
