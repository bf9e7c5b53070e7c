"""Importers of the paper's five datasets, on miniature archives in each publisher's layout."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_builders import Log, check_layout, snapshot

from mamf.cli import main
from mamf.data.importers import IMPORTERS
from mamf.data.importers.archive import Archive
from mamf.data.importers.clevr import iter_array
from mamf.data.importers.mini_imagenet import class_table
from mamf.system.errors import MamfError

SIZE = (24, 20)


def image(seed: int, fmt: str = "JPEG") -> bytes:
    rng = random.Random(seed)
    im = Image.new("RGB", SIZE, tuple(rng.randrange(256) for _ in range(3)))
    im.putpixel((rng.randrange(SIZE[0]), rng.randrange(SIZE[1])), (0, 0, 0))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def lines(rows) -> bytes:
    return "".join(" ".join(map(str, r)) + "\n" for r in rows).encode()


# --------------------------------------------------------------------------- CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
CUB_PER_CLASS = (4, 4, 2)  # the last image of class 3 is damaged


def cub_files(extra_image: bool = False) -> dict[str, bytes]:
    files, images, labels, split, boxes = {}, [], [], [], []
    image_id = 0
    for c, (folder, n) in enumerate(zip(CUB_CLASSES, CUB_PER_CLASS), 1):
        for i in range(n + (extra_image and c == 1)):
            image_id += 1
            name = f"{folder}/{folder[4:]}_{i:04d}_{image_id}.jpg"
            damaged = c == 3 and i == n - 1
            files[f"CUB_200_2011/images/{name}"] = b"\xff\xd8 not a jpeg" if damaged else image(image_id)
            images.append((image_id, name))
            labels.append((image_id, c))
            split.append((image_id, image_id % 2))
            boxes.append((image_id, 3.0, 2.0, 10.0, 8.0))
    files["attributes.txt"] = b"1 has_bill_shape::curved\n"
    files["CUB_200_2011/README"] = b"The Caltech-UCSD Birds-200-2011 Dataset\n"
    files["CUB_200_2011/classes.txt"] = lines(enumerate(CUB_CLASSES, 1))
    files["CUB_200_2011/images.txt"] = lines(images)
    files["CUB_200_2011/image_class_labels.txt"] = lines(labels)
    files["CUB_200_2011/train_test_split.txt"] = lines(split)
    files["CUB_200_2011/bounding_boxes.txt"] = lines(boxes)
    files["CUB_200_2011/parts/parts.txt"] = b"1 back\n"
    return files


@pytest.fixture
def cub_tgz(tmp_path) -> Path:
    return write_tar(tmp_path / "CUB_200_2011.tgz", cub_files())


def test_cub_from_its_archive(cub_tgz, tmp_path):
    log = Log()
    root = IMPORTERS["cub"](cub_tgz, tmp_path / "cub", log=log)
    mapping = check_layout(root, 3, 9)
    assert mapping == {"Black_footed_Albatross": "A photo of Black footed Albatross",
                       "Laysan_Albatross": "A photo of Laysan Albatross",
                       "Sooty_Albatross": "A photo of Sooty Albatross"}
    originals = {Path(k).name: v for k, v in cub_files().items()}
    for path in root.glob("*/*.jpg"):  # copied unchanged, both sides of train_test_split
        assert path.read_bytes() == originals[path.name]
    assert len(list((root / "Sooty_Albatross").iterdir())) == 1
    text = (root / "DATASET.md").read_text()
    assert hashlib.sha256(cub_tgz.read_bytes()).hexdigest() in text
    assert "1 could not be decoded and were skipped" in text
    assert "Sooty_Albatross_0001_10.jpg" in text
    assert "mamf data cub --from=" in text and "--seed=0" in text
    assert any("skipped 1 damaged" in line for line in log)


def test_cub_extracted_folder_gives_the_same_images(cub_tgz, tmp_path):
    from_archive = IMPORTERS["cub"](cub_tgz, tmp_path / "a", log=Log())
    folder = write_folder(tmp_path / "extracted", cub_files())
    for source in (folder, folder / "CUB_200_2011"):  # the parent or the dataset folder itself
        from_folder = IMPORTERS["cub"](source, tmp_path / source.name / "cub", log=Log())
        assert {k: v[1] for k, v in snapshot(from_folder).items() if "/" in k} == \
            {k: v[1] for k, v in snapshot(from_archive).items() if "/" in k}


def test_cub_crops_to_bounding_boxes(cub_tgz, tmp_path):
    root = IMPORTERS["cub"](cub_tgz, tmp_path / "cub", crop_boxes=True, log=Log())
    sizes = {Image.open(p).size for p in root.glob("*/*.jpg")}
    assert sizes == {(10, 8)}
    assert "cropped to its box" in (root / "DATASET.md").read_text()


def test_subset_is_seeded_recorded_and_stable(cub_tgz, tmp_path):
    def chosen(seed, classes=2, per_class=3, name=None):
        root = IMPORTERS["cub"](cub_tgz, tmp_path / (name or f"s{seed}-{classes}"), classes=classes,
                                per_class=per_class, seed=seed, log=Log())
        return root, sorted(str(p.relative_to(root)) for p in root.glob("*/*.jpg"))

    root, first = chosen(1)
    check_layout(root, 2, 6)  # class 3 has only 2 images: never eligible for 3 per class
    assert not (root / "Sooty_Albatross").exists()
    text = (root / "DATASET.md").read_text()
    assert "2 of the 3 classes with at least 3 images (2 eligible), drawn at random with seed 1" in text
    assert "3 images of each, drawn at random with seed 1" in text
    assert chosen(1, name="again")[1] == first
    assert len({tuple(chosen(s)[1]) for s in range(2, 8)}) > 1
    # a class's images do not depend on which other classes were drawn
    one = chosen(1, classes=None, name="all")[1]
    assert [p for p in one if not p.startswith("Sooty")] == first
    with pytest.raises(MamfError, match="--classes 3 asks for more than the 2 classes with at least 3"):
        chosen(1, classes=3)
    with pytest.raises(MamfError, match="per_class must be"):
        chosen(1, per_class=0)


def test_rerun_does_nothing_and_another_input_is_refused(cub_tgz, tmp_path, monkeypatch):
    root = IMPORTERS["cub"](cub_tgz, tmp_path / "cub", classes=2, log=Log())
    before = snapshot(root)

    def no_hashing(self):
        raise AssertionError("the untouched archive was hashed again")

    with monkeypatch.context() as m:
        m.setattr(Archive, "sha256", no_hashing)
        log = Log()
        assert IMPORTERS["cub"](cub_tgz, root, classes=2, log=log) == root
    assert any("already built" in line for line in log)
    assert snapshot(root) == before
    # the same archive moved elsewhere is hashed again and recognised
    moved = cub_tgz.rename(tmp_path / "moved.tgz")
    log = Log()
    IMPORTERS["cub"](moved, root, classes=2, log=log)
    assert any("already built" in line for line in log) and snapshot(root) == before

    other = write_tar(tmp_path / "other.tgz", cub_files(extra_image=True))
    with pytest.raises(MamfError, match="already holds cub imported from .*CUB_200_2011.tgz; another input"):
        IMPORTERS["cub"](other, root, classes=2, log=Log())
    assert snapshot(root) == before
    # other options on the same input never rebuild in place (results measured on the folder
    # would be taken for the new data's); into another folder they do
    with pytest.raises(MamfError, match="built with classes=2: building it with other options"):
        IMPORTERS["cub"](moved, root, classes=1, log=Log())
    assert snapshot(root) == before
    other_root = IMPORTERS["cub"](moved, tmp_path / "cub-1", classes=1, log=Log())
    check_layout(other_root, 1, len(list(other_root.glob("*/*.jpg"))))


def test_wrong_inputs_are_refused_in_one_line(cub_tgz, tmp_path):
    clevr = write_zip(tmp_path / "CLEVR_v1.0.zip", clevr_files())
    with pytest.raises(MamfError) as e:
        IMPORTERS["cub"](clevr, tmp_path / "x", log=Log())
    message = str(e.value)
    assert "is not CUB-200-2011" in message and "\n" not in message
    assert "no classes.txt, images.txt, image_class_labels.txt, train_test_split.txt, " \
           "bounding_boxes.txt found" in message
    partial = cub_files()
    del partial["CUB_200_2011/bounding_boxes.txt"]
    with pytest.raises(MamfError, match=r"not CUB-200-2011 .*: no bounding_boxes.txt found"):
        IMPORTERS["cub"](write_tar(tmp_path / "partial.tgz", partial), tmp_path / "x", log=Log())
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    evil = cub_files()
    evil["CUB_200_2011/classes.txt"] = evil["CUB_200_2011/classes.txt"].replace(
        b"001.Black_footed_Albatross", b"001.../Black_footed_Albatross")
    with pytest.raises(MamfError, match="class '../Black_footed_Albatross' cannot be a folder name"):
        IMPORTERS["cub"](write_tar(tmp_path / "evil.tgz", evil), tmp_path / "x", log=Log())
    with pytest.raises(MamfError, match="neither a folder nor a tar, tar.gz or zip"):
        IMPORTERS["cub"](text, tmp_path / "x", log=Log())
    with pytest.raises(MamfError, match="does not exist"):
        IMPORTERS["cub"](tmp_path / "nope.tgz", tmp_path / "x", log=Log())
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(cub_tgz.read_bytes()[: cub_tgz.stat().st_size // 2])
    with pytest.raises(MamfError, match="damaged or truncated"):
        IMPORTERS["cub"](truncated, tmp_path / "x", log=Log())
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


# --------------------------------------------------------------------------- mini-ImageNet

MINI = {"train": ["n01532829", "n01558993"], "val": ["n01855672"], "test": ["n01930112"]}


def mini_files(bad_label: str | None = None) -> dict[str, bytes]:
    files, seed = {}, 0
    for split, wnids in MINI.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for i in range(3):
                seed += 1
                name = f"{wnid}{i:08d}.jpg"
                files[f"mini-imagenet/images/{name}"] = image(seed)
                rows.append(f"{name},{wnid}")
        if bad_label and split == "test":
            rows.append(f"{bad_label}00000001.jpg,{bad_label}")
        files[f"mini-imagenet/{split}.csv"] = ("\n".join(rows) + "\n").encode()
    return files


def test_mini_imagenet_from_zip(tmp_path):
    source = write_zip(tmp_path / "mini-imagenet.zip", mini_files())
    root = IMPORTERS["mini-imagenet"](source, tmp_path / "mini", log=Log())
    mapping = check_layout(root, 4, 12)
    assert mapping == {"house_finch": "A photo of house finch", "robin": "A photo of robin",
                       "goose": "A photo of goose", "nematode": "A photo of nematode"}
    assert len(list((root / "goose").glob("n01855672*.jpg"))) == 3
    bad = write_zip(tmp_path / "bad.zip", mini_files(bad_label="n09999999"))
    with pytest.raises(MamfError, match="'n09999999', which is not one of the 20 test classes"):
        IMPORTERS["mini-imagenet"](bad, tmp_path / "bad", log=Log())


def test_mini_imagenet_table_is_the_ravi_larochelle_split():
    table = class_table()
    splits = table["splits"]
    assert [len(splits[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    ids = splits["train"] + splits["val"] + splits["test"]
    assert len(set(ids)) == 100 and set(table["names"]) == set(ids)
    imagenet = json.loads((Path(__file__).parents[1] / "src/mamf/models/data/imagenet_classes.json")
                          .read_text())
    first_lemma = dict(zip(imagenet["synsets"], imagenet["classes"]))
    assert all(table["names"][w] == first_lemma[w] for w in ids)
    assert len(set(table["names"].values())) == 100


# --------------------------------------------------------------------------- FGVCx Fungi 2018

FUNGI = {10000: "Abortiporus biennis", 10001: "Agaricus arvensis", 10002: "Amanita muscaria"}


def fungi_archives(tmp_path: Path, twice: bool = False) -> tuple[Path, Path]:
    images, coco = {}, {"train": {"images": [], "annotations": [], "categories": []},
                        "val": {"images": [], "annotations": [], "categories": []}}
    image_id = 0
    for cid, species in FUNGI.items():
        folder = f"{cid}_{species.replace(' ', '_')}"
        for i in range(3):
            image_id += 1
            split = "val" if i == 2 else "train"
            file_name = f"images/{folder}/AB{image_id:05d}.JPG"
            images[file_name] = image(image_id)
            coco[split]["images"].append({"id": image_id, "file_name": file_name, "width": 24,
                                          "height": 20, "license": 1})
            coco[split]["annotations"].append({"id": image_id, "image_id": image_id,
                                               "category_id": cid})
    if twice:  # image 1 annotated as two species: left out
        coco["train"]["annotations"].append({"id": 99, "image_id": 1, "category_id": 10001})
    for split in coco:
        coco[split]["categories"] = [{"id": c, "name": n, "supercategory": "Fungi"}
                                     for c, n in FUNGI.items()]
        coco[split]["info"] = {"year": 2018}
    annotations = write_tar(tmp_path / "train_val_annotations.tgz",
                            {f"{s}.json": json.dumps(coco[s]).encode() for s in coco})
    return write_tar(tmp_path / "fungi_train_val.tgz", images), annotations


def test_fungi_from_its_two_archives(tmp_path):
    images, annotations = fungi_archives(tmp_path)
    root = IMPORTERS["fungi"]([images, annotations], tmp_path / "fungi", log=Log())
    mapping = check_layout(root, 3, 9)
    assert mapping["amanita_muscaria"] == "A photo of Amanita muscaria"
    assert sorted(p.name for p in (root / "abortiporus_biennis").iterdir()) == \
        ["AB00001.JPG", "AB00002.JPG", "AB00003.JPG"]
    text = (root / "DATASET.md").read_text()
    for archive in (images, annotations):
        assert hashlib.sha256(archive.read_bytes()).hexdigest() in text
    with pytest.raises(MamfError, match="is not FGVCx Fungi 2018.*no train.json, val.json found"):
        IMPORTERS["fungi"](images, tmp_path / "no-annotations", log=Log())
    (tmp_path / "twice").mkdir()
    images, annotations = fungi_archives(tmp_path / "twice", twice=True)
    root = IMPORTERS["fungi"]([annotations, images], tmp_path / "fungi2", log=Log())
    check_layout(root, 3, 8)
    assert "Left out: 1 images listed under two classes." in (root / "DATASET.md").read_text()


# --------------------------------------------------------------------------- CLEVR v1.0

CLEVR = {"train": [3, 4, 3, 4], "val": [3, 5]}


def clevr_files() -> dict[str, bytes]:
    files = {"CLEVR_v1.0/LICENSE.txt": b"Creative Commons Attribution 4.0\n"}
    for split, counts in CLEVR.items():
        scenes = []
        for i, n in enumerate(counts):
            name = f"CLEVR_{split}_{i:06d}.png"
            files[f"CLEVR_v1.0/images/{split}/{name}"] = image(i + 100 * (split == "val"), "PNG")
            objects = [{"color": "red", "shape": "cube", "3d_coords": [0.5, -1.0, 0.35]}] * n
            scenes.append({"image_index": i, "image_filename": name, "split": split,
                           "objects": objects, "relationships": {"left": [[]] * n}})
        info = {"split": split, "license": "Creative Commons Attribution (CC BY 4.0)"}
        files[f"CLEVR_v1.0/scenes/CLEVR_{split}_scenes.json"] = \
            json.dumps({"info": info, "scenes": scenes}).encode()
    files["CLEVR_v1.0/images/test/CLEVR_test_000000.png"] = image(999, "PNG")
    return files


def test_clevr_counting_from_zip(tmp_path):
    source = write_zip(tmp_path / "CLEVR_v1.0.zip", clevr_files())
    root = IMPORTERS["clevr-counting"](source, tmp_path / "clevr", log=Log())
    mapping = check_layout(root, 3, 6)
    assert mapping == {"3": "An image of 3 objects", "4": "An image of 4 objects",
                       "5": "An image of 5 objects"}
    assert sorted(p.name for p in (root / "3").iterdir()) == \
        ["CLEVR_train_000000.png", "CLEVR_train_000002.png", "CLEVR_val_000000.png"]
    assert not list(root.glob("*/CLEVR_test_*"))
    assert "test split (`images/test/`) ships without scenes" in (root / "DATASET.md").read_text()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_scenes_are_decoded_one_at_a_time_across_chunk_edges(chunk):
    scenes = [{"objects": [{"n": k, "s": "a \"quoted\" ]}, value", "f": -1.5e-3}] * k,
               "image_filename": f"x{k}.png", "ok": [True, False, None]} for k in range(6)]
    doc = {"info": {"scenes": "not this one", "n": 12345}, "scenes": scenes, "after": [1, 2]}
    text = json.dumps(doc, indent=1).encode()
    assert list(iter_array(io.BytesIO(text), "scenes", chunk=chunk)) == scenes
    assert list(iter_array(io.BytesIO(b'{"a": 1, "scenes": []}'), "scenes", chunk=chunk)) == []
    with pytest.raises(KeyError):
        list(iter_array(io.BytesIO(b'{"a": 12345}'), "scenes", chunk=chunk))
    with pytest.raises(ValueError):
        list(iter_array(io.BytesIO(b'{"scenes": [{"a": 1}, {"b": '), "scenes", chunk=chunk))


# --------------------------------------------------------------------------- ABO material

def listing(item: str, image_id: str | None, *materials: tuple[str, str]) -> dict:
    out = {"item_id": item, "item_name": [{"language_tag": "en_US", "value": f"thing {item}"}],
           "material": [{"language_tag": tag, "value": value} for tag, value in materials]}
    if image_id:
        out["main_image_id"] = image_id
    return out


def abo_archives(tmp_path: Path) -> tuple[Path, Path]:
    listings = [
        listing("B1", "11aaaaaaaaL", ("en_US", "Wood"), ("de_DE", "Holz")),
        listing("B2", "12bbbbbbbbL", ("en_GB", " wood ")),
        listing("B3", "13ccccccccL", ("en_US", "Metal")),
        listing("B4", "14ddddddddL", ("en_US", "Metal"), ("en_US", "Glass")),   # two materials
        listing("B5", "15eeeeeeeeL", ("fr_FR", "Bois")),                        # no English
        listing("B6", "16ffffffffL", ("en_US", "Glass")),                       # conflicting image:
        listing("B7", "16ffffffffL", ("en_US", "Plastic")),                     # left out
        listing("B8", None, ("en_US", "Wood")),                                 # no main image
        listing("B9", "19iiiiiiiiL", ("en_IN", "Stainless Steel")),
    ]
    shards = {f"listings/metadata/listings_{k}.json.gz": gzip.compress(
        "".join(json.dumps(x) + "\n" for x in listings[k::2]).encode()) for k in range(2)}
    listings_tar = write_tar(tmp_path / "abo-listings.tar", shards, mode="w")
    rows, images = ["image_id,height,width,path"], {}
    for k, image_id in enumerate(["11aaaaaaaaL", "12bbbbbbbbL", "13ccccccccL", "14ddddddddL",
                                  "15eeeeeeeeL", "16ffffffffL", "19iiiiiiiiL"]):
        path = f"{k:02x}/{k:02x}{image_id[:6].lower()}.jpg"
        rows.append(f"{image_id},20,24,{path}")
        images[f"images/small/{path}"] = image(k)
    images["images/metadata/images.csv.gz"] = gzip.compress(("\n".join(rows) + "\n").encode())
    return listings_tar, write_tar(tmp_path / "abo-images-small.tar", images, mode="w")


def test_abo_material_keeps_single_material_products(tmp_path):
    listings_tar, images_tar = abo_archives(tmp_path)
    root = IMPORTERS["abo-material"]([images_tar, listings_tar], tmp_path / "abo", log=Log())
    mapping = check_layout(root, 3, 4)
    assert mapping == {"wood": "A photo of a product made of wood",
                       "metal": "A photo of a product made of metal",
                       "stainless_steel": "A photo of a product made of stainless steel"}
    assert sorted(p.name for p in (root / "wood").iterdir()) == ["0011aaaa.jpg", "0112bbbb.jpg"]
    text = (root / "DATASET.md").read_text()
    assert ("Left out: 1 listings without an English material, 1 listings of several materials, "
            "1 listings without a main image, 1 images that listings give different materials."
            in text)
    assert "Subset: All 3 classes, all their images." in text
    with pytest.raises(MamfError, match=r"no images/metadata/images.csv.gz found"):
        IMPORTERS["abo-material"](listings_tar, tmp_path / "only-listings", log=Log())


# --------------------------------------------------------------------------- the command line

def test_cli_imports_and_refuses_in_one_line(cub_tgz, tmp_path, capsys):
    out = tmp_path / "cub"
    assert main(["data", "cub", "--from", str(cub_tgz), "--out", str(out), "--classes", "2",
                 "--per-class", "3", "--seed", "5", "--crop-boxes"]) == 0
    assert "cub is ready in" in capsys.readouterr().out
    check_layout(out, 2, 6)
    assert "--classes=2 --per-class=3 --seed=5 --crop-boxes" in (out / "DATASET.md").read_text()
    for argv, message in [
        (["data", "cub", "--out", str(tmp_path / "a")], "pass --from PATH"),
        (["data", "counting", "--from", str(cub_tgz), "--out", str(tmp_path / "b")],
         "--from is for the importers"),
        (["data", "fungi", "--from", str(cub_tgz), "--out", str(tmp_path / "c"), "--crop-boxes"],
         "--crop-boxes is for cub only"),
        (["data", "cub", "--from", str(cub_tgz), "--out", str(tmp_path / "d"), "--set", "x=1"],
         "not --set"),
        (["data", "clevr-counting", "--from", str(cub_tgz), "--out", str(tmp_path / "e")],
         "is not CLEVR v1.0"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mamf: error:") and message in err and "\n" not in err


def test_a_member_over_the_size_bound_is_skipped_and_counted_unread(tmp_path, monkeypatch):
    """A listed image larger than MAX_IMAGE_BYTES (here lowered to 4 KiB) is never read whole:
    at most the bound and one byte come out of its stream, and it is counted as damaged."""
    import numpy as np

    from mamf.data.importers import common

    monkeypatch.setattr(common, "MAX_IMAGE_BYTES", 4096)
    src = tmp_path / "src" / "birds"
    src.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(src / "small.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src / "big.png")  # a valid image, but over the bound
    assert (src / "big.png").stat().st_size > 4096
    read: list[int] = []
    members = Archive.members

    def spying(self, want):
        for path, stream in members(self, want):
            real = stream.read
            stream = type("S", (), {"read": lambda _, n=-1, real=real: read.append(n) or real(n)})()
            yield path, stream

    monkeypatch.setattr(Archive, "members", spying)
    items = [common.Item("birds/small.png", "bird", "small.png"),
             common.Item("birds/big.png", "bird", "big.png")]
    out = tmp_path / "out"
    out.mkdir()
    counts, corrupt = common.copy_images([Archive(tmp_path / "src")], items, 2, out, print)
    assert (counts["written"], counts["corrupt"], counts["too_large"]) == (1, 1, 1)
    assert corrupt == ["birds/big.png (over 0.00390625 MiB)"] and read == [4097, 4097]
    assert [p.name for p in (out / "bird").iterdir()] == ["small.png"]
