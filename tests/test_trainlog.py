"""Training logs: train_log.csv always in the run folder, TensorBoard scalars with --tensorboard."""

from __future__ import annotations

import json

import pytest

from mamf.cli import main
from mamf.engine.trainlog import CSV_NAME, read_csv


def _train(folder, out, *extra):
    return main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(out), "--lr", "1e-3", "--steps", "4",
                 "--batch-size", "6", "--quiet", *extra])


def test_csv_and_tensorboard_hold_every_step(colour_folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, logs = tmp_path / "run", tmp_path / "tb"
    assert _train(colour_folder, run, "--tensorboard", str(logs)) == 0
    losses = json.loads((run / "train.json").read_text())["losses"]
    logged = read_csv(run / CSV_NAME)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert [r["loss"] for r in logged] == losses  # repr round-trips the floats exactly
    assert all(r["lr"] == 1e-3 and r["images_per_s"] > 0 for r in logged)

    events = EventAccumulator(str(logs))
    events.Reload()
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3, 4]
    assert [s.value for s in scalars] == pytest.approx(losses, rel=1e-6)


def test_the_log_folder_is_not_a_setting(colour_folder, tmp_path):
    """A finished run asked again with logs elsewhere is the same run (nothing retrained), and
    without --tensorboard the CSV is still written."""
    run = tmp_path / "run"
    assert _train(colour_folder, run) == 0
    assert len(read_csv(run / CSV_NAME)) == 4
    before = (run / "train.json").read_text()
    assert _train(colour_folder, run, "--tensorboard", str(tmp_path / "tb")) == 0
    assert (run / "train.json").read_text() == before


def test_a_resumed_run_logs_each_step_once(tmp_path):
    """Rows past the checkpoint a run resumes from are dropped before it logs them again."""
    from mamf.engine.trainlog import TrainLog

    first = TrainLog(tmp_path, None)
    for step in range(1, 6):
        first.step(step, 1.0 / step, 0.1, 8)
    first.close()  # as if killed after step 5, with the newest checkpoint at step 3
    again = TrainLog(tmp_path, None, start=3)
    for step in (4, 5, 6):
        again.step(step, 2.0, None, 8)
    again.close()
    logged = read_csv(tmp_path / CSV_NAME)
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in logged] == [1.0, 0.5, 1.0 / 3, 2.0, 2.0, 2.0]
    assert logged[-1]["lr"] is None


def test_a_resumed_run_keeps_its_checkpoint_step_in_tensorboard(tmp_path):
    """TensorBoard drops the events at and past `purge_step`: the resumed run purges from the
    step after its checkpoint, so the checkpoint's own step (the last one it kept) stays."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mamf.engine.trainlog import TrainLog

    first = TrainLog(None, str(tmp_path / "tb"))
    for step in range(1, 6):
        first.step(step, 1.0 / step, 0.1, 8)
    first.close()  # killed after step 5, the newest checkpoint at step 3
    again = TrainLog(None, str(tmp_path / "tb"), start=3)
    for step in (4, 5, 6):
        again.step(step, 2.0, 0.1, 8)
    again.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2, 3, 4, 5, 6]
    assert [s.value for s in scalars] == pytest.approx([1.0, 0.5, 1 / 3, 2.0, 2.0, 2.0])


def test_each_training_of_a_grid_is_its_own_tensorboard_run(colour_folder, tmp_path):
    """One subfolder per training, named as its train_logs/ folder (its cell)."""
    pytest.importorskip("tensorboard")
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mamf.runs.experiment import load_experiment, run_experiment

    logs = tmp_path / "tb"
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tb", "model": "tiny-random-clip", "methods": ["classical", "mamf"],
        "seeds": [1, 2], "settings": {"train": {"lr": 1e-3, "steps": 3, "batch_size": 6,
                                                 "log_dir": str(logs)},
                                       "metatest": {"epochs": 1}, "data": {"tasks": 2}},
        "datasets": {"colours": {"root": str(colour_folder), "ways": [2]}}}))
    out = tmp_path / "out"
    rows = run_experiment(load_experiment(path), out, progress=False)
    trainings = sorted(p.name for p in (out / "train_logs").iterdir())
    assert len(trainings) == 4 and sorted(p.name for p in logs.iterdir()) == trainings
    assert not list(logs.glob("events.*"))  # nothing in the shared folder itself
    for name in trainings:
        events = EventAccumulator(str(logs / name))
        events.Reload()
        assert [s.step for s in events.Scalars("train/loss")] == [1, 2, 3]
    assert len(rows) == 4
    for kept in (out / "configs").glob("*.yaml"):  # the settings as asked, not per training
        assert yaml.safe_load(kept.read_text())["train"]["log_dir"] == str(logs)


def test_eval_every_logs_dev_accuracy_at_its_steps_and_changes_nothing_else(colour_folder,
                                                                            tmp_path):
    pytest.importorskip("tensorboard")
    import numpy as np
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mamf.config import build_config
    from mamf.data.dataset import ImageDataset
    from mamf.engine.metatest import evaluation_tasks, score
    from mamf.features.inputs import ModelInputs
    from mamf.runs.config_id import config_id
    from mamf.runs.run_folder import load_run

    plain, every, logs = tmp_path / "plain", tmp_path / "every", tmp_path / "tb"
    assert _train(colour_folder, plain) == 0
    assert _train(colour_folder, every, "--set", "train.eval_every=2",
                  "--tensorboard", str(logs)) == 0
    logged = read_csv(every / CSV_NAME)
    assert [r["step"] for r in logged if r["dev_acc"] is not None] == [2, 4]
    assert all(0 <= r["dev_acc"] <= 1 for r in logged if r["dev_acc"] is not None)
    assert [r["dev_acc"] for r in read_csv(plain / CSV_NAME)] == [None] * 4
    # scoring the dev tasks changes no weight and no random stream of the training
    assert [r["loss"] for r in logged] == [r["loss"] for r in read_csv(plain / CSV_NAME)]
    assert (every / "model.safetensors").read_bytes() == (plain / "model.safetensors").read_bytes()
    # the last logged value (step 4, the last step) is the trained model's dev accuracy
    config, model = load_run(every)
    dataset = ImageDataset.load(colour_folder, model.image_size)
    inputs = ModelInputs(model.eval(), dataset, torch.device("cpu"))
    tasks = evaluation_tasks(dataset, config, "dev", config.data.ways)
    assert logged[-1]["dev_acc"] == pytest.approx(
        float(np.mean([score(model, inputs, t) for t in tasks])), abs=1e-9)
    events = EventAccumulator(str(logs))
    events.Reload()
    assert [s.step for s in events.Scalars("dev/accuracy")] == [2, 4]
    assert [s.value for s in events.Scalars("dev/accuracy")] == pytest.approx(
        [r["dev_acc"] for r in logged if r["dev_acc"] is not None], rel=1e-6)
    config = build_config(overrides={"train.eval_every": 3})
    assert config_id(config) == config_id(build_config())  # what is logged, not what is measured


def test_eval_every_must_be_positive():
    from mamf.config import build_config
    from mamf.system.errors import MamfError

    with pytest.raises(MamfError, match="train.eval_every must be positive, got 0"):
        build_config(overrides={"train.eval_every": 0})
