"""Tuning on dev (docs/method.md, "Tuning"): a grid of rates per method scored on dev-split tasks
with a seed of its own, never reading a test image; the choice reaches the experiment's rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import make_folder

from mamf.cli import main
from mamf.engine import metatest, training
from mamf.features.inputs import ModelInputs
from mamf.protocols.paper import paper_pool
from mamf.runs import measure
from mamf.runs.experiment import parse_experiment, run_experiment
from mamf.runs.tune import TUNE_FILE, tune_experiment
from mamf.system.errors import MamfError

ONE_SEED = "these tests check tuning's mechanics on one tune seed"
GRID = {"train.lr": [1e-4, 1e-3, 1e-2, 1e-1], "metatest.lr": [1e-5, 1e-4, 1e-3, 1e-2]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("tune") / "colours", n_classes=6, per_class=10)


def experiment(folder, **tune):
    return {"name": "tuned", "model": "tiny-random-clip", "methods": ["zeroshot", "classical",
                                                                       "mamf"],
            "seeds": [1], "settings": {"train": {"freeze_image_backbone": True,
                                                 "freeze_text_tower": True, "augment": False,
                                                 "epochs": 1, "batch_size": 16},
                                       "metatest": {"epochs": 1}},
            "datasets": {"colours": {"root": str(folder), "ways": [3]}},
            "tune": {"seed": 0, "grid": GRID, "asymmetric": ONE_SEED, **tune}}


def test_tuning_reads_dev_tasks_only_and_its_choice_reaches_the_rows(tmp_path, folder,
                                                                     monkeypatch):
    exp = parse_experiment(experiment(folder))
    seen, splits, trained = [], [], []
    real_images, real_tasks, real_train = ModelInputs.images, metatest.evaluation_tasks, \
        training.train

    def images(self, model, indices, *args, **kwargs):
        seen.extend(np.asarray(indices).tolist())
        return real_images(self, model, indices, *args, **kwargs)

    def tasks(dataset, config, split, ways):
        splits.append(split)
        return real_tasks(dataset, config, split, ways)

    def counted(*args, **kwargs):
        trained.append(args[3].train.lr)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ModelInputs, "images", images)
    monkeypatch.setattr(measure, "evaluation_tasks", tasks)
    monkeypatch.setattr(metatest, "evaluation_tasks", tasks)
    monkeypatch.setattr("mamf.runs.tune.train", counted, raising=False)
    import mamf.engine.training

    monkeypatch.setattr(mamf.engine.training, "train", counted)
    chosen = tune_experiment(exp, tmp_path / "out")
    from mamf.data.dataset import ImageDataset

    dataset = ImageDataset.load(str(folder), 16)
    test = set(np.concatenate(paper_pool(dataset, "test").images).tolist())
    assert seen and not test & set(seen)  # no test image was embedded for tuning
    assert splits and set(splits) == {"dev"}
    assert trained == GRID["train.lr"] * 2  # each train point once per method, metatest re-scores
    saved = json.loads((tmp_path / "out" / TUNE_FILE).read_text())
    for method in ("classical", "mamf"):
        entry = saved["entries"][f"colours/{method}"]
        assert len(entry["scores"]) == 16
        best = max(entry["scores"], key=lambda s: s["dev_acc"])
        assert entry["chosen"] == {**best["train"], **best["metatest"]}
        assert chosen[("colours", method)]["values"] == entry["chosen"]
        assert chosen[("colours", method)]["seed"] == 0
    # resumable: a second call trains nothing and chooses the same
    trained.clear()
    assert tune_experiment(exp, tmp_path / "out") == chosen and trained == []
    monkeypatch.undo()
    rows = run_experiment(exp, tmp_path / "out", progress=False)
    for r in rows:
        if r.method == "zeroshot":
            assert "tuned_on_dev" not in r.to_json()
            continue
        assert r.tuned_on_dev == chosen[("colours", r.method)]
        config = yaml.safe_load((tmp_path / "out" / "configs" / f"{r.config_id}.yaml")
                                .read_text())
        values = r.tuned_on_dev["values"]
        assert config["train"]["lr"] == values["train.lr"]
        assert config["metatest"]["lr"] == values["metatest.lr"]
        assert config["seed"] == 1


def test_the_tune_section_is_checked(folder):
    with pytest.raises(MamfError, match="one of the experiment's seeds"):
        parse_experiment(experiment(folder, seed=1))
    with pytest.raises(MamfError, match="not a train"):
        parse_experiment(experiment(folder, grid={"data.ways": [2]}))
    with pytest.raises(MamfError, match="changes the prepared model"):
        parse_experiment(experiment(folder, grid={"train.freeze_text_tower": [True]}))


def test_mamf_tune_writes_the_grid_and_prints_the_choice(tmp_path, folder, capsys):
    raw = experiment(folder, grid={"train.lr": [1e-3, 1e-2], "metatest.lr": [1e-4]},
                     methods=["mamf"])
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["tune", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "colours mamf: train.lr=" in printed and "dev accuracy" in printed
    entries = json.loads((tmp_path / "out" / TUNE_FILE).read_text())["entries"]
    assert list(entries) == ["colours/mamf"] and len(entries["colours/mamf"]["scores"]) == 2


def test_a_dataset_entry_may_run_some_methods_only(tmp_path, folder):
    raw = experiment(folder)
    del raw["tune"]
    raw["datasets"]["colours-sequential"] = {"root": str(folder), "ways": [3],
                                             "methods": ["classical", "mamf"],
                                             "settings": {"train": {"schedule": "sequential"}}}
    rows = run_experiment(parse_experiment(raw), tmp_path / "out", progress=False)
    ran = sorted((r.experiment_dataset, r.method) for r in rows)
    assert ran == [("colours", "classical"), ("colours", "mamf"), ("colours", "zeroshot"),
                   ("colours-sequential", "classical"), ("colours-sequential", "mamf")]
    with pytest.raises(MamfError, match="'methods' must list methods of the experiment"):
        raw["datasets"]["colours-sequential"]["methods"] = ["fomaml"]
        parse_experiment(raw)


@pytest.mark.parametrize("name", ["paper-offline-matched.yaml", "spurious-tuned.yaml",
                                  "paper-offline-expressive-matched.yaml"])
def test_the_matched_studies_tune_on_dev_with_wide_grids(name):
    from pathlib import Path

    from mamf.runs.experiment import load_experiment, run_config

    exp = load_experiment(Path(__file__).parents[1] / "configs" / name)
    assert len(exp.seeds) == 5 and exp.tune.seed not in exp.seeds
    for method in exp.tune.methods_of(exp.methods):
        for ds in exp.datasets:
            for key, values in exp.tune.grid_of(method, ds.name).items():
                assert len(values) >= 4 and max(values) / min(values) >= 999, (method, key)
    for ds in exp.datasets:
        config = run_config(exp, ds, "mamf", 312, "/placeholder")
        assert config.train.budget == "matched"
    schedules = {run_config(exp, ds, "mamf", 312, "/x").train.schedule for ds in exp.datasets}
    assert schedules == ({"sampled", "sequential"} if name == "paper-offline-matched.yaml"
                         else {"sampled"})


def test_a_diverging_grid_point_is_recorded_and_the_rest_are_scored_as_alone(tmp_path, folder):
    """A rate at which the loss becomes NaN is a grid point that lost, not the end of tuning;
    and a test-time rate that diverges leaves no weights behind for the next point."""
    def tune(out, train_lrs, test_lrs):
        raw = experiment(folder, grid={"train.lr": train_lrs, "metatest.lr": test_lrs},
                         methods=["classical"])
        raw["settings"]["metatest"]["epochs"] = 3
        raw["settings"]["train"].update(freeze_image_backbone=False, steps=30, batch_size=8)
        tune_experiment(parse_experiment(raw), tmp_path / out)
        return json.loads((tmp_path / out / TUNE_FILE).read_text())["entries"]["colours/classical"]

    entry = tune("both", [1e30, 1e-2], [1e30, 1e-4])
    marks = {(s["train"]["train.lr"], s["metatest"]["metatest.lr"]): s.get("diverged")
             for s in entry["scores"]}
    assert marks == {(1e30, 1e30): "training", (1e30, 1e-4): "training",
                     (1e-2, 1e30): "meta-test", (1e-2, 1e-4): None}
    assert entry["chosen"] == {"train.lr": 1e-2, "metatest.lr": 1e-4}
    alone = tune("alone", [1e-2], [1e-4])
    assert entry["scores"][-1]["dev_acc"] == alone["scores"][0]["dev_acc"] is not None
    with pytest.raises(MamfError, match="every tuning grid point of colours classical diverged"):
        tune("none", [1e30], [1e-4])


def test_a_dataset_entry_may_give_its_own_grid(tmp_path, folder):
    """A capacity that trains more values is tuned on lower rates: the entry's `tune:` grid
    replaces the experiment's for it, and only for it."""
    raw = experiment(folder, grid={"train.lr": [1e-2, 1e-1], "metatest.lr": [1e-3]},
                     methods=["classical"])
    raw["datasets"]["colours-low"] = {"root": str(folder), "ways": [3],
                                      "tune": {"grid": {"train.lr": [1e-5, 1e-4, 1e-3],
                                                        "metatest.lr": [1e-5]}}}
    exp = parse_experiment(raw)
    assert exp.tune.grid_of("classical", "colours") == raw["tune"]["grid"]
    chosen = tune_experiment(exp, tmp_path / "out")
    entries = json.loads((tmp_path / "out" / TUNE_FILE).read_text())["entries"]
    assert [s["train"]["train.lr"] for s in entries["colours-low/classical"]["scores"]] == \
        [1e-5, 1e-4, 1e-3]
    assert [s["train"]["train.lr"] for s in entries["colours/classical"]["scores"]] == [1e-2, 1e-1]
    assert chosen[("colours-low", "classical")]["values"]["train.lr"] in (1e-5, 1e-4, 1e-3)
    assert chosen[("colours-low", "classical")]["values"]["metatest.lr"] == 1e-5
    raw["datasets"]["colours-low"]["tune"] = {"seed": 5}
    with pytest.raises(MamfError, match="'tune' takes 'grid' and 'method_grid' only"):
        parse_experiment(raw)
    raw["datasets"]["colours-low"]["tune"] = {"grid": {"train.freeze_text_tower": [True]}}
    with pytest.raises(MamfError, match="changes the prepared model"):
        parse_experiment(raw)
    del raw["tune"]
    raw["datasets"]["colours-low"]["tune"] = {"grid": {"train.lr": [1e-3]}}
    with pytest.raises(MamfError, match="needs the experiment's 'tune:' section"):
        parse_experiment(raw)


def test_several_tune_seeds_average_each_point_over_their_trainings(tmp_path, folder):
    """A rate that trains well on one seed only is not chosen on that seed's luck: with
    `seed: [a, b]` every point trains under each and scores their mean."""
    def entry(out, seed):
        raw = experiment(folder, seed=seed, grid={"train.lr": [1e-3, 1e-1],
                                                  "metatest.lr": [1e-4]}, methods=["mamf"])
        chosen = tune_experiment(parse_experiment(raw), tmp_path / out)
        saved = json.loads((tmp_path / out / TUNE_FILE).read_text())
        return saved, chosen[("colours", "mamf")]

    one, _ = entry("a", 0)
    other, _ = entry("b", 7)
    both, chosen = entry("ab", [0, 7])
    assert both["seed"] == [0, 7] and chosen["seed"] == [0, 7]
    for k, score in enumerate(both["entries"]["colours/mamf"]["scores"]):
        a = one["entries"]["colours/mamf"]["scores"][k]["dev_acc"]
        b = other["entries"]["colours/mamf"]["scores"][k]["dev_acc"]
        assert score["dev_acc_by_seed"] == {"0": a, "7": b}
        assert score["dev_acc"] == pytest.approx((a + b) / 2)
    with pytest.raises(MamfError, match="one of the experiment's seeds"):
        parse_experiment(experiment(folder, seed=[0, 1]))
    with pytest.raises(MamfError, match="a list of distinct"):
        parse_experiment(experiment(folder, seed=[0, 0]))
    with pytest.raises(MamfError, match="was tuned with seed"):
        tune_experiment(parse_experiment(experiment(folder, seed=[0, 8])), tmp_path / "ab")
