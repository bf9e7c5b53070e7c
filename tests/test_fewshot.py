"""The field's few-shot protocols: coop (all-way, K shots per class, the whole test split) and
base2novel (train on the first half of the classes, test on both halves)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamf.cli import main
from mamf.config import build_config
from mamf.data.dataset import ImageDataset
from mamf.data.fewshot import harmonic_mean, image_split
from mamf.errors import MamfError
from mamf.metatest import evaluation_tasks
from mamf.run import evaluate_prepared, prepare, ways_list
from mamf.training import train_pool

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True}


def config_for(folder, **over):
    return build_config(overrides={**FROZEN, "data.root": str(folder), "data.protocol": "coop",
                                   "data.shots": 2, **over})


def test_coop_tasks_are_all_way_k_shots_from_train_and_the_whole_test_split(
        shared_colour_folder):
    dataset = ImageDataset.load(shared_colour_folder, 32)
    config = config_for(shared_colour_folder, seed=1)
    (task,) = evaluation_tasks(dataset, config, "test", 5)
    n = dataset.n_classes
    assert task.ways == n and list(task.classes) == list(range(n))
    train, test = image_split(dataset, "train", None), image_split(dataset, "test", None)
    for c in range(n):
        support = task.support[task.support_labels == c]
        assert len(support) == 2 and set(support) <= set(train[c])
        assert sorted(task.query[task.query_labels == c]) == sorted(test[c])
    # a trained method's whole training set is the same K shots
    pool = train_pool(dataset, config)
    assert sorted(np.concatenate(pool.images)) == sorted(task.support)
    # the seed draws the shots; the test split stays
    (other,) = evaluation_tasks(dataset, config_for(shared_colour_folder, seed=2), "test", 5)
    assert set(other.support) != set(task.support)
    assert np.array_equal(other.query, task.query)
    assert ways_list(config, n, None) == [n]
    with pytest.raises(MamfError, match="classifies all 10 classes at once"):
        ways_list(config, n, "3")


def test_coop_reads_a_split_file(shared_colour_folder, tmp_path):
    dataset = ImageDataset.load(shared_colour_folder, 32)
    names = [(c, dataset.file_names[i]) for c, x in enumerate(dataset.class_images) for i in x]

    def entry(c, f):
        return [f"images/{dataset.classes[c]}/{f}", c, dataset.classes[c]]

    split = {"train": [entry(c, f) for c, f in names if f < "img_004"],
             "val": [entry(c, f) for c, f in names if "img_004" <= f < "img_006"],
             "test": [entry(c, f) for c, f in names if f >= "img_006"]
             + [["images/nowhere/x.jpg", 0, "nowhere"]]}
    path = tmp_path / "split_zhou_Colours.json"
    path.write_text(json.dumps(split))
    config = config_for(shared_colour_folder, **{"data.split_file": str(path)})
    (task,) = evaluation_tasks(dataset, config, "test", 5)
    assert sorted(dataset.file_names[i] for i in task.query[task.query_labels == 0]) == \
        ["img_006.png", "img_007.png", "img_008.png", "img_009.png"]
    assert all(dataset.file_names[i] < "img_004" for i in task.support)
    (dev,) = evaluation_tasks(dataset, config, "dev", 5)
    assert all("img_004" <= dataset.file_names[i] < "img_006" for i in dev.query)


def test_base2novel_rows_carry_base_novel_and_their_harmonic_mean(shared_colour_folder):
    config = config_for(shared_colour_folder, **{"data.protocol": "base2novel"})
    model, dataset, inputs = prepare(config)
    base, novel = evaluation_tasks(dataset, config, "test", 5)
    assert list(base.classes) == [0, 1, 2, 3, 4] and list(novel.classes) == [5, 6, 7, 8, 9]
    assert len(base.support) == 10 and len(novel.support) == 0
    assert list(train_pool(dataset, config).classes) == [0, 1, 2, 3, 4]
    row = evaluate_prepared(model, dataset, inputs, config, "prototype", 10, progress=False)
    assert row["task_accs"] == [row["base_acc"], row["novel_acc"]]
    b, n = row["base_acc"], row["novel_acc"]
    assert row["hm"] == row["acc_mean"] == pytest.approx(2 * b * n / (b + n))
    assert harmonic_mean(0.5, 1.0) == pytest.approx(2 / 3) and harmonic_mean(0, 0) == 0


def test_a_trained_method_on_coop_trains_on_the_k_shots_and_evaluates_all_way(
        shared_colour_folder, tmp_path):
    run, out = tmp_path / "run", tmp_path / "out"
    common = ["--data", str(shared_colour_folder), "--protocol", "coop", "--shots", "2",
              "--set", "train.freeze_image_backbone=true", "--set",
              "train.freeze_text_tower=true", "--quiet"]
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--out",
                 str(run), "--steps", "2", *common]) == 0
    assert main(["evaluate", "--run", str(run), "--out", str(out), *common]) == 0
    (row,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert (row["protocol"], row["ways"], row["shots"], row["n_tasks"]) == ("coop", 10, 2, 1)
    assert row["queries"] == 20  # every test image: 2 of each of the 10 classes
