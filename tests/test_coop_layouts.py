"""The field's benchmark read from the folders users already have: CoOp's DATASETS.md layouts
(built here as miniature replicas, `coop_replicas`), CoOp's class names, templates, splits and
few-shot draws, and the one-line refusals of incomplete folders."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

import coop_replicas as replicas
import numpy as np
import pytest

from mamf.config import build_config
from mamf.data import coop_layouts
from mamf.data.coop_splits import drawn_split, training_shots
from mamf.data.dataset import ImageDataset, class_count
from mamf.engine.metatest import evaluation_tasks
from mamf.protocols.base2novel import base_novel
from mamf.runs.measure import row_head
from mamf.system.errors import MamfError

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return replicas.build_all(tmp_path_factory.mktemp("coop") / "DATA")


def config_for(root, **over):
    return build_config(overrides={**FROZEN, "data.root": str(root), "data.protocol": "coop",
                                   "data.shots": 2, "seed": 1, **over})


# CoOp's class names in label order, and its template, for every replica (DATASETS.md folders)
EXPECTED = {
    "imagenet": (["tench", "goldfish", "great white shark", "tiger shark"], "a photo of a {}."),
    "caltech-101": (["face", "leopard", "accordion", "airplane"], "a photo of a {}."),
    "oxford_pets": (["abyssinian", "american_bulldog", "bengal"],
                    "a photo of a {}, a type of pet."),
    "stanford_cars": (["2012 Audi TTS Coupe", "2012 BMW M3 coupe", "2007 Chevrolet Express Van"],
                      "a photo of a {}."),
    "oxford_flowers": (["pink primrose", "hard-leaved pocket orchid", "canterbury bells"],
                       "a photo of a {}, a type of flower."),
    "food-101": (["apple_pie", "baby_back_ribs", "baklava"], "a photo of {}, a type of food."),
    "fgvc_aircraft": (["707-320", "A300B4", "Cessna 172"], "a photo of a {}, a type of aircraft."),
    "sun397": (["abbey", "outdoor apartment_building", "shop bakery"], "a photo of a {}."),
    "dtd": (["banded", "blotchy", "braided"], "{} texture."),
    "eurosat": (["Annual Crop Land", "Forest", "Herbaceous Vegetation Land"],
                "a centered satellite photo of {}."),
    "ucf101": (["Apply_Eye_Makeup", "Archery", "Baby_Crawling"], "a photo of a person doing {}."),
    "imagenetv2": (["tench", "goldfish", "great white shark", "tiger shark"], "a photo of a {}."),
    "imagenet-sketch": (["tench", "goldfish", "great white shark", "tiger shark"],
                        "a photo of a {}."),
}


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_each_layout_is_read_with_coops_names_order_and_template(data, folder):
    dataset = ImageDataset.load(data / folder, 32, draws=[(2, 1)])
    names, template = EXPECTED[folder]
    assert dataset.classes == names
    assert dataset.prompts == [template.replace("{}", n.replace("_", " ")) for n in names]
    config = config_for(data / folder)
    head = row_head(dataset, config, "zeroshot", dataset.n_classes)
    assert head["prompts"] == "coop" and head["template"] == template
    assert head["coop_dataset"] == dataset.coop.layout.name
    assert head["split_file_sha256"] == dataset.coop.sha256
    assert class_count(data / folder) == len(names)


def test_split_file_datasets_read_every_image_their_split_names_and_no_other(data):
    dataset = ImageDataset.load(data / "caltech-101", 32)
    split = json.loads((data / "caltech-101" / "split_zhou_Caltech101.json").read_text())
    named = {e[0] for k in ("train", "val", "test") for e in split[k]}
    assert {n.removeprefix("101_ObjectCategories/") for n in dataset.file_names} == named
    assert not any("BACKGROUND_Google" in n or "Faces_easy" in n for n in dataset.file_names)
    test = drawn_split(dataset, config_for(data / "caltech-101").data, "test", 1)
    for c, images in enumerate(test):
        want = {e[0] for e in split["test"] if e[1] == c}
        assert {dataset.file_names[i].split("/", 1)[1] for i in images} == want


def dassl_fewshot(split: dict, k: int, seed: int) -> tuple[set, set]:
    """CoOp's few-shot sets as its own code forms them, on its Datum-like records: the global
    random seeded by the seed (Dassl's set_random_seed), generate_fewshot_dataset on train, then
    on val with min(K, 4)."""
    random.seed(seed)
    out = []
    for key, n in (("train", k), ("val", min(k, 4))):
        tracker = defaultdict(list)
        for impath, label, name in split[key]:
            tracker[label].append((impath, label, name))
        chosen = []
        for items in tracker.values():
            chosen += random.sample(items, n) if len(items) >= n else items
        out.append({c[0] for c in chosen})
    return out[0], out[1]


@pytest.mark.parametrize("k,seed", [(1, 1), (2, 2), (4, 3), (16, 1)])
def test_shots_and_dev_are_drawn_as_coop_draws_them(data, k, seed):
    """OxfordPets' replica lists its training entries out of label order: Dassl walks the labels
    in the order they first appear, and so must the draw."""
    root = data / "oxford_pets"
    split = json.loads((root / "split_zhou_OxfordPets.json").read_text())
    dataset = ImageDataset.load(root, 32)
    config = config_for(root, seed=seed, **{"data.shots": k})
    train_want, dev_want = dassl_fewshot(split, k, seed)

    def names(per_class):
        return {dataset.file_names[i].removeprefix("images/") for x in per_class for i in x}

    assert names(training_shots(dataset, config.data, seed)) == train_want
    assert names(drawn_split(dataset, config.data, "dev", seed)) == dev_want
    (task,) = evaluation_tasks(dataset, config, "test", dataset.n_classes)
    assert {dataset.file_names[i].removeprefix("images/") for i in task.support} == train_want


def test_base2novel_splits_classes_in_coops_label_order(data):
    root = data / "caltech-101"
    dataset = ImageDataset.load(root, 32)
    config = config_for(root, **{"data.protocol": "base2novel"})
    base_task, novel_task = evaluation_tasks(dataset, config, "test", dataset.n_classes)
    assert [dataset.classes[c] for c in base_task.classes] == ["face", "leopard"]
    assert [dataset.classes[c] for c in novel_task.classes] == ["accordion", "airplane"]
    assert len(novel_task.support) == 0
    assert list(base_novel(dataset.n_classes)[0]) == [0, 1]


def test_base2novel_tunes_on_the_base_classes_only_as_cocoop_validates(data):
    """CoCoOp subsamples its validation set to the base classes: the dev split's tasks (what
    tuning scores) hold no novel class, and a dev row is the base accuracy."""
    from mamf.protocols import get

    root = data / "caltech-101"
    dataset = ImageDataset.load(root, 32)
    config = config_for(root, **{"data.protocol": "base2novel"})
    (dev,) = evaluation_tasks(dataset, config, "dev", dataset.n_classes)
    assert [dataset.classes[c] for c in dev.classes] == ["face", "leopard"]
    assert len(evaluation_tasks(dataset, config, "test", dataset.n_classes)) == 2
    assert get("base2novel").aggregate([0.75]) == (0.75, 0.0, {"base_acc": 0.75})


def test_imagenet_reads_only_the_drawn_training_images(data):
    root = data / "imagenet"
    dataset = ImageDataset.load(root, 32, draws=[(2, 1), (4, 2)])
    train_names = [n for n in dataset.file_names if n.startswith("images/train/")]
    per_class = replicas.IMAGENET_TRAIN
    assert len(train_names) < per_class * len(replicas.IMAGENET)
    assert sum(n.startswith("images/val/") for n in dataset.file_names) == \
        replicas.IMAGENET_VAL * len(replicas.IMAGENET)
    for k, seed in [(2, 1), (4, 2)]:
        config = config_for(root, seed=seed, **{"data.shots": k})
        shots = training_shots(dataset, config.data, seed)
        dev = drawn_split(dataset, config.data, "dev", seed)
        test = drawn_split(dataset, config.data, "test", seed)
        for c in range(dataset.n_classes):
            assert len(shots[c]) == k and len(dev[c]) == min(k, 4)
            assert not set(shots[c]) & set(dev[c])
            assert all(dataset.file_names[i].startswith("images/train/") for i in dev[c])
            assert all(dataset.file_names[i].startswith("images/val/") for i in test[c])
    # CoOp's draw of the shots, over every training image in name order
    random.seed(1)
    listing = {w: sorted(p.name for p in (root / "images" / "train" / w).iterdir())
               for w, _ in replicas.IMAGENET}
    want = {f"images/train/{w}/{n}" for w, _ in replicas.IMAGENET
            for n in random.sample(listing[w], 2)}
    config = config_for(root, seed=1)
    got = {dataset.file_names[i] for x in training_shots(dataset, config.data, 1) for i in x}
    assert got == want
    with pytest.raises(MamfError, match="8-shot draw of seed 1 was not made"):
        training_shots(dataset, config_for(root, **{"data.shots": 8}).data, 1)


@pytest.mark.parametrize("folder,n", [("imagenet-adversarial", 200), ("imagenet-rendition", 200),
                                      ("imagenetv2", 4), ("imagenet-sketch", 4)])
def test_variants_are_test_only_over_their_own_classes(data, folder, n):
    dataset = ImageDataset.load(data / folder, 32)
    assert dataset.n_classes == n
    config = config_for(data / folder)
    (task,) = evaluation_tasks(dataset, config, "test", n)
    assert task.ways == n and len(task.support) == 0 and len(task.query) == len(dataset.file_names)
    with pytest.raises(MamfError, match="test-only dataset .*mamf evaluate --run RUN"):
        from mamf.protocols import get

        get("coop").pool(dataset, config.data, "train", 1)


def test_imagenet_a_and_r_hold_their_publishers_200_classes_in_wnid_order(data):
    for folder, listed in (("imagenet-adversarial", "imagenet_a_wnids.txt"),
                           ("imagenet-rendition", "imagenet_r_wnids.txt")):
        read = coop_layouts.read(data / folder, coop_layouts.recognise(data / folder))
        assert read.wnids == sorted(replicas.wnid_list(listed))
        assert len(read.wnids) == 200
    a, r = set(replicas.wnid_list("imagenet_a_wnids.txt")), \
        set(replicas.wnid_list("imagenet_r_wnids.txt"))
    assert a != r and len(a & r) > 0  # two different subsets of ImageNet's 1,000


def copy_of(data: Path, folder: str, tmp_path: Path) -> Path:
    target = tmp_path / folder
    shutil.copytree(data / folder, target)
    return target


@pytest.mark.parametrize("folder,damage,message", [
    ("oxford_pets", lambda r: (r / "split_zhou_OxfordPets.json").unlink(),
     r"CoOp's OxfordPets folder .* but split_zhou_OxfordPets.json is missing"),
    ("caltech-101", lambda r: (r / "101_ObjectCategories" / "Faces" / "image_0001.jpg").unlink(),
     r"CoOp's Caltech101 folder .* but 1 of the 40 images its split names are absent, e.g. "
     r".*Faces/image_0001.jpg"),
    ("fgvc_aircraft", lambda r: (r / "variants.txt").unlink(),
     "CoOp's FGVCAircraft folder .* but variants.txt is missing"),
    ("fgvc_aircraft", lambda r: (r / "images_variant_val.txt").write_text("1 Concorde\n"),
     "images_variant_val.txt names the variant 'Concorde', which variants.txt does not list"),
    ("imagenet", lambda r: (r / "classnames.txt").unlink(),
     "CoOp's ImageNet folder .* but classnames.txt is missing"),
    ("imagenet", lambda r: shutil.rmtree(r / "images" / "val" / "n01440764"),
     "images/train and images/val hold different class folders"),
    ("imagenet-adversarial", lambda r: shutil.rmtree(r / "imagenet-a" / "n01498041"),
     "imagenet-a/ holds 199 of its 200 classes \\(missing e.g. n01498041\\)"),
    ("imagenet-rendition", lambda r: (r / "classnames.txt").write_text("n01443537 goldfish\n"),
     "its classnames.txt has no name for 199 of its class folders"),
    ("imagenetv2", lambda r: shutil.rmtree(r / "imagenetv2-matched-frequency-format-val" / "3"),
     "1 of its 4 class folders \\(0..3\\) are missing, e.g. 3"),
    ("eurosat", lambda r: (r / "split_zhou_EuroSAT.json").write_text('{"train": []}'),
     "split_zhou_EuroSAT.json does not map train, val and test"),
])
def test_an_incomplete_layout_is_one_line_saying_what_is_missing(data, tmp_path, folder,
                                                                  damage, message):
    root = copy_of(data, folder, tmp_path)
    damage(root)
    with pytest.raises(MamfError, match=message) as e:
        ImageDataset.load(root, 32)
    assert "\n" not in str(e.value)


def test_a_split_naming_one_image_in_two_splits_is_refused(data, tmp_path):
    root = copy_of(data, "dtd", tmp_path)
    path = root / "split_zhou_DescribableTextures.json"
    split = json.loads(path.read_text())
    split["test"].append(split["train"][0])
    path.write_text(json.dumps(split))
    with pytest.raises(MamfError, match="is in both the train and the test split"):
        ImageDataset.load(root, 32)


def test_a_plain_folder_stays_plain_even_with_a_class_named_images(tmp_path):
    from conftest import make_folder

    root = make_folder(tmp_path / "mine", n_classes=3, per_class=4)
    (root / "red").rename(root / "images")
    assert coop_layouts.recognise(root) is None
    dataset = ImageDataset.load(root, 32)
    assert dataset.coop is None and dataset.classes == ["blue", "green", "images"]
    assert dataset.prompt_source == "template" and dataset.row_fields() == {}
    named = make_folder(tmp_path / "named", n_classes=3, per_class=4)
    (named / "classnames.txt").write_text("blue the blue one\n")  # a file of its own
    assert coop_layouts.recognise(named) is None
    # a plain folder that happens to carry a layout's name, without its image folder, too
    plain = make_folder(tmp_path / "eurosat", n_classes=3, per_class=4)
    assert coop_layouts.recognise(plain) is None


def test_a_users_template_or_ensemble_replaces_coops(data):
    root = data / "oxford_pets"
    own = ImageDataset.load(root, 32, template="itap of a {label}.")
    assert own.prompts[0] == "itap of a abyssinian." and own.template is None
    assert own.prompt_source == "template" and own.row_fields() == {"coop_dataset": "OxfordPets"}


def test_short_classes_take_all_their_images_as_coop_does(data, caplog):
    root = data / "dtd"
    dataset = ImageDataset.load(root, 32)
    shots = training_shots(dataset, config_for(root, **{"data.shots": 16}).data, 1)
    assert [len(x) for x in shots] == [replicas.TRAIN] * 3
    assert "fewer than 16 training images" in caplog.text


def test_labels_first_appear_out_of_order_in_the_pets_replica(data):
    """The replica itself: the draw test above is only a test of the order if this holds."""
    split = json.loads((data / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())
    first = list(dict.fromkeys(e[1] for e in split["train"]))
    assert first != sorted(first)
    assert np.all(np.diff([e[1] for e in split["test"]]) >= 0)


def test_a_split_file_beside_a_layout_is_refused_not_ignored(data, tmp_path):
    root = data / "oxford_pets"
    dataset = ImageDataset.load(root, 32)
    other = tmp_path / "split.json"
    other.write_text("{}")
    config = config_for(root, **{"data.split_file": str(other)})
    with pytest.raises(MamfError, match="brings its own split: drop data.split_file"):
        evaluation_tasks(dataset, config, "test", dataset.n_classes)
