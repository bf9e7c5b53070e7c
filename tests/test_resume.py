"""Interrupted training resumes from its last checkpoint and ends exactly as an uninterrupted run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mamf.cli import main

pytestmark = pytest.mark.slow  # torchrun, subprocesses or the pretrained model


def train_args(method, folder, out, extra=()):
    return ["train", "--method", method, "--model", "tiny-random-clip", "--data", str(folder),
            "--out", str(out), "--ways", "3", "--lr", "1e-3", "--steps", "40", "--quiet",
            "--set", "train.checkpoint_every=4", "--set", "train.augment=true",
            "--batch-size", "8", *extra]


@pytest.mark.parametrize("method, extra", [
    ("classical", ()), ("mamf", ()), ("mamf", ("--schedule", "sequential", "--epochs", "2")),
    ("fomaml", ("--set", "train.inner_lr=0.01")),
    ("mamf", ("--set", "train.augment=false", "--set", "train.unfreeze_image_blocks=1",
              "--set", "train.unfreeze_text_layers=1")),
    # the learned context (and CoCoOp's meta-net) in the model, SGD's momentum, cosine rates
    ("coop", ("--set", "train.lr_schedule=cosine", "--set", "baseline.coop_lr=0.1")),
    ("cocoop", ("--set", "baseline.cocoop_lr=0.1")),
])
def test_killed_training_resumes_to_the_same_weights(shared_colour_folder, tmp_path, method,
                                                     extra):
    if "sequential" in extra:
        extra = (*extra, "--set", "train.steps=null")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(train_args(method, shared_colour_folder, whole, extra)) == 0

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "mamf",
                             *train_args(method, shared_colour_folder, killed, extra)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and not pointer.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if (killed / "train.json").exists():
        pytest.skip("the child finished before it could be killed")
    assert pointer.exists()
    step = json.loads((killed / "checkpoints" / pointer.read_text().split('"')[3] /
                       "state.json").read_text())["step"]
    assert step >= 4
    assert main(train_args(method, shared_colour_folder, killed, extra)) == 0

    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses_a = json.loads((whole / "train.json").read_text())["losses"]
    losses_b = json.loads((killed / "train.json").read_text())["losses"]
    assert losses_a == losses_b
    assert not (killed / "checkpoints").exists()


def test_a_run_folder_with_other_settings_is_refused(shared_colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args("classical", shared_colour_folder, out)) == 0
    assert main(train_args("classical", shared_colour_folder, out)) == 0  # done: nothing to do
    assert main(train_args("mamf", shared_colour_folder, out)) == 2
    assert "holds a training run with other settings" in capsys.readouterr().err


def test_a_run_written_before_a_setting_existed_is_the_same_run(shared_colour_folder, tmp_path,
                                                                 caplog):
    """A config.yaml from an older version lacks the newer keys: at their defaults it is the
    same run (done, nothing to do), not one with other settings."""
    out = tmp_path / "run"
    assert main(train_args("classical", shared_colour_folder, out)) == 0
    path = out / "config.yaml"
    old = yaml.safe_load(path.read_text())
    del old["train"]["unfreeze_image_blocks"], old["train"]["adapter"], old["baseline"]
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level(logging.INFO):
        assert main(train_args("classical", shared_colour_folder, out)) == 0
    assert "nothing to do" in caplog.text
    old["train"]["lr"] = 0.5  # a setting that differs is still refused
    path.write_text(yaml.safe_dump(old))
    assert main(train_args("classical", shared_colour_folder, out)) == 2
