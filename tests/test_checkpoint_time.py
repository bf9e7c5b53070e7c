"""Checkpoints by wall time (`train.checkpoint_minutes`), written by a background thread: the
training goes on while a checkpoint reaches the disk, and a run resumed from one ends exactly as
the uninterrupted run."""

from __future__ import annotations

import threading

import pytest
import torch

from mamf.config import build_config
from mamf.engine import checkpoint
from mamf.engine.checkpoint import Checkpointer
from mamf.engine.training import train
from mamf.runs.prepare import prepare
from mamf.system.errors import MamfError


class Clock:
    """Half a minute passes each time the time is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 30.0
        return self.now


def trained(folder, steps, checkpoints, monkeypatch):
    monkeypatch.setattr(checkpoint.time, "monotonic", Clock())
    config = build_config(overrides={"model": "tiny-random-clip", "data.root": str(folder),
                                     "data.ways": 3, "train.method": "mamf",
                                     "train.steps": steps, "train.batch_size": 8,
                                     "train.lr": 1e-3, "train.augment": True})
    model, dataset, inputs = prepare(config, fresh=True)
    ck = Checkpointer(checkpoints, 0, minutes=1, background=True)
    result = train(model, inputs, dataset, config, progress=False, checkpointer=ck)
    return {k: v.clone() for k, v in model.state_dict().items()}, result.losses


def test_checkpoints_by_wall_time_are_written_in_the_background_and_resume_exactly(
        shared_colour_folder, tmp_path, monkeypatch):
    writers = []
    real = checkpoint.save_file

    def save_file(tensors, path, **options):
        writers.append(threading.current_thread().name)
        real(tensors, path, **options)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    whole, losses = trained(shared_colour_folder, 8, tmp_path / "whole", monkeypatch)
    # a minute has passed at steps 2, 4, 6 and 8 of the fake clock: four checkpoints, each
    # two files written away from the training's thread
    assert writers == ["mamf-checkpoint"] * 8
    assert Checkpointer(tmp_path / "whole", 0).restore(
        prepare(build_config(overrides={"model": "tiny-random-clip",
                                        "data.root": str(shared_colour_folder)}))[0]).step == 8
    trained(shared_colour_folder, 5, tmp_path / "cut", monkeypatch)  # its last checkpoint: step 4
    resumed, resumed_losses = trained(shared_colour_folder, 8, tmp_path / "cut", monkeypatch)
    assert resumed_losses == losses
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_an_error_in_the_background_write_is_raised_by_the_training(shared_colour_folder,
                                                                     tmp_path, monkeypatch):
    def broken(tensors, path, **options):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(MamfError, match="No space left on device"):
        trained(shared_colour_folder, 3, tmp_path / "ck", monkeypatch)
