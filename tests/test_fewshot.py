"""The field's few-shot protocols: coop (all-way, K shots per class, the whole test split) and
base2novel (train on the first half of the classes, test on both halves)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mamf.cli import main
from mamf.config import build_config
from mamf.data.coop_splits import image_split
from mamf.data.dataset import ImageDataset
from mamf.engine.metatest import evaluation_tasks
from mamf.engine.training import train_pool
from mamf.protocols.base2novel import harmonic_mean
from mamf.runs.measure import evaluate_prepared
from mamf.runs.prepare import prepare
from mamf.runs.ways import ways_list
from mamf.system.errors import MamfError
from tests.conftest import results_row

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
    row = evaluate_prepared(model, dataset, inputs, config, "prototype", 10, progress=False).to_json()
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


def test_a_coop_experiment_runs_the_shots_axis_and_reports_mean_and_std(shared_colour_folder,
                                                                       tmp_path):
    from mamf.report import write_report
    from mamf.runs.experiment import load_experiment, run_experiment

    path = tmp_path / "coop.yaml"
    path.write_text(f"""
name: coop
model: tiny-random-clip
methods: [zeroshot, tip-adapter, mamf]
seeds: [1, 2]
shots: [1, 2]
settings: {{data: {{protocol: coop, ways: 3}}, train: {{steps: 2, freeze_image_backbone: true,
  freeze_text_tower: true}}}}
datasets: {{colours: {{root: {shared_colour_folder}}}}}
""")
    rows = run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    assert sorted((r.method, r.shots, r.seed) for r in rows) == sorted(
        (m, k, s) for m in ("zeroshot", "tip-adapter", "mamf") for k in (1, 2) for s in (1, 2))
    assert all(r.ways == 10 and r.n_tasks == 1 for r in rows)
    assert run_experiment(load_experiment(path), tmp_path / "out", progress=False) == rows
    files = write_report(rows, tmp_path / "out", "coop")
    text = files["md"].read_text()
    assert "### coop: all-way accuracy against shots" in text and "| 1-shot | 2-shot |" in text
    tip = [r.acc_mean for r in rows if r.method == "tip-adapter" and r.shots == 2]
    assert f"{100 * np.mean(tip):.1f} ± {100 * np.std(tip, ddof=1):.1f} (2)" in text
    assert files["shots-colours"].is_file()
    assert "published" not in text  # an offline dataset matches no published number
    # the headline never pools the two shot counts: a row each, as the shots table has them
    head = text.split("## Accuracy")[1].split("\n\n")[1]
    assert head.startswith("| dataset | shots | zero-shot | MAMF | Tip-Adapter |"), head
    assert [line.split(" | ")[1] for line in head.splitlines()[2:]] == ["1", "2"]


def test_published_numbers_appear_only_where_dataset_backbone_and_protocol_match():
    from mamf.report.fewshot import anchor_lines, load_anchors

    anchors = load_anchors()
    names = ["ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101",
             "FGVCAircraft", "SUN397", "DTD", "EuroSAT", "UCF101"]

    def rows(model, datasets, protocol="coop"):
        return [results_row(dataset=d, method="tip-adapter", model=model, protocol=protocol,
                            ways=10, shots=k, queries=20, seed=s, acc_mean=0.5)
                for d in datasets for k in (1, 4, 16)
                for s in (1, 2, 3)]

    shown = anchor_lines(rows("openai/clip-vit-base-patch16", names))
    text = "\n".join(shown)
    assert "| CoOp (*published*) | 68.1 | - | 73.6 | - | 79.0 |" in text
    assert "| Tip-Adapter (mamf) | 50.0 | - | 50.0 | - | 50.0 | this report |" in text
    assert anchor_lines(rows("openai/clip-vit-base-patch32", names)) == []  # other backbone
    assert anchor_lines(rows("openai/clip-vit-base-patch16", names[:-1])) == []  # 10 of 11
    assert anchor_lines(rows("tiny-random-clip", ["colours"])) == []
    assert anchors["protocol"] == "coop"
    other = rows("openai/clip-vit-base-patch16", names, protocol="episodic")
    assert anchor_lines(other) == []  # another protocol's rows


def test_shots_and_splits_axes_together_resume_cell_by_cell(shared_colour_folder, tmp_path):
    """The grid's shots axis times its splits axis: one row a (method, shots, split, seed), and a
    resumed grid recomputes exactly the lost cells, with the same numbers."""
    import json

    from mamf.runs.experiment import load_experiment, run_experiment

    path = tmp_path / "grid.yaml"
    path.write_text(f"""
name: grid
model: tiny-random-clip
methods: [zeroshot, classical]
seeds: [1]
shots: [1, 2]
splits: [test, dev]
settings: {{data: {{protocol: coop, ways: 3}}, train: {{steps: 2, freeze_image_backbone: true,
  freeze_text_tower: true}}}}
datasets: {{colours: {{root: {shared_colour_folder}}}}}
""")
    out = tmp_path / "out"
    rows = run_experiment(load_experiment(path), out, progress=False)
    cells = sorted((r.method, r.shots, r.split) for r in rows)
    assert cells == sorted((m, k, s) for m in ("zeroshot", "classical") for k in (1, 2)
                           for s in ("test", "dev"))
    kept = [r for r in rows if not (r.method == "classical" and r.shots == 2)]
    (out / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in kept))
    again = run_experiment(load_experiment(path), out, progress=False)
    assert len(again) == len(rows)
    key = lambda r: (r.method, r.shots, r.split)  # noqa: E731
    assert {key(r): r.task_accs for r in again} == {key(r): r.task_accs for r in rows}
