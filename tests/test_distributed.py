"""Under torchrun (gloo, 2 CPU processes): data-parallel training takes one process's steps,
sharded evaluation and experiments write one process's rows, and a failing rank ends the job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mamf.cli import main
from mamf.config import build_config, dump_yaml
from mamf.engine.checkpoint import Checkpointer
from mamf.engine.training import train
from mamf.runs.prepare import prepare

pytestmark = pytest.mark.slow  # torchrun subprocesses

KEYS = ("method", "dataset", "protocol", "ways", "shots", "queries", "seed", "split", "n_tasks",
        "acc_mean", "acc_ci95", "task_accs")
# Adam turns rounding noise in an exactly-zero gradient into lr-sized steps: attention key biases
# have one (softmax ignores a constant added to every key), so they are left out of the check
ZERO_GRADIENT = "k_proj.bias"


def _torchrun(args, cwd, script=None, timeout_s=60, **env_vars):
    target = [script] if script else ["-m", "mamf"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MAMF_DIST_TIMEOUT=str(timeout_s), **env_vars)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *target, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _train_args(method, folder, out, extra=()):
    # a global batch of 7 splits 4 + 3 across two ranks: the uneven share is weighted
    return ["train", "--method", method, "--model", "tiny-random-clip", "--data", str(folder),
            "--out", str(out), "--ways", "3", "--lr", "1e-3", "--steps", "8", "--batch-size",
            "7", "--quiet", "--set", "train.augment=true", "--set", "train.inner_lr=0.01",
            "--set", "train.meta_batch=3", "--set", "train.checkpoint_every=3", *extra]


def _assert_same_training(one, two, start=None):
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    checked = [k for k in a if not k.endswith(ZERO_GRADIENT)]
    assert max(float((a[k] - b[k]).abs().max()) for k in checked) < 2e-4
    if start is not None:  # training moved the weights far beyond that tolerance
        assert max(float((a[k] - start[k]).abs().max()) for k in checked) > 5e-3
    la = json.loads((one / "train.json").read_text())["losses"]
    lb = json.loads((two / "train.json").read_text())["losses"]
    assert len(la) == len(lb) == 8
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4  # same batches, same crops, each step


@pytest.mark.parametrize("method, extra", [
    ("classical", ("--candidates", "batch")),
    ("mamf", ()),
    ("fomaml", ()),  # a meta-batch of 3 tasks: rank 0 adapts two, rank 1 one
    ("classical", ("--set", "train.parallel=fsdp")),
    # the confusion sampler learns from every rank's logits, summed: the ranks draw alike
    ("mamf", ("--set", "train.sampler=confusion")),
    ("fomaml", ("--set", "train.sampler=confusion")),
    ("mamf", ("--set", "train.parallel=fsdp", "--set", "train.sampler=confusion")),
    # the last block of each tower over the cached boundaries (which the ranks computed in shares)
    *[(method, ("--set", "train.augment=false", "--set", "train.unfreeze_image_blocks=1", "--set",
                "train.unfreeze_text_layers=1", *parallel))
      for method, parallel in [("mamf", ()), ("fomaml", ()),
                               ("classical", ("--set", "train.parallel=fsdp"))]],
])
def test_two_ranks_train_the_weights_of_one_process(shared_colour_folder, tmp_path, method,
                                                      extra):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_train_args(method, shared_colour_folder, one, extra)) == 0
    done = _torchrun(_train_args(method, shared_colour_folder, two, extra), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trained") == 1 and "on 2 processes" in done.stdout  # rank 0 speaks
    assert json.loads((two / "train.json").read_text())["processes"] == 2
    assert not (two / "checkpoints").exists()
    if "train.parallel=fsdp" in extra:
        held, whole = map(int, re.search(r"this rank holds (\d+) of their (\d+) values",
                                         done.stderr).groups())
        assert 0 < held < whole * 0.6
    start = {k: v for k, v in prepare(build_config({"model": "tiny-random-clip",
                                                    "data": {"root": str(shared_colour_folder)}}),
                                      fresh=True)[0].state_dict().items()}
    _assert_same_training(one, two, start)


@pytest.mark.parametrize("method", ["classical", "mamf"])
def test_two_ranks_train_the_lora_adapter_of_one_process(shared_colour_folder, tmp_path, method):
    """LoRA under DDP: the adapter two ranks train is the one a single process trains."""
    extra = ("--set", "train.adapter=lora", "--set", "train.augment=false")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_train_args(method, shared_colour_folder, one, extra)) == 0
    done = _torchrun(_train_args(method, shared_colour_folder, two, extra), tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((two / "train.json").read_text())["processes"] == 2
    a, b = (load_file(str(run / "adapter.safetensors")) for run in (one, two))
    assert a.keys() == b.keys() and any(".lora_B." in k for k in a)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-4
    assert max(float(a[k].abs().max()) for k in a if ".lora_B." in k) > 5e-3  # it trained
    la = json.loads((one / "train.json").read_text())["losses"]
    lb = json.loads((two / "train.json").read_text())["losses"]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_two_ranks_train_the_prompt_context_of_one_process(shared_colour_folder, tmp_path,
                                                           method):
    """CoOp and CoCoOp share each batch across the ranks and sum the context's gradient."""
    extra = ("--set", "baseline.coop_lr=0.1", "--set", "baseline.cocoop_lr=0.1")
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_train_args(method, shared_colour_folder, one, extra)) == 0
    done = _torchrun(_train_args(method, shared_colour_folder, two, extra), tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((two / "train.json").read_text())["processes"] == 2
    a, b = (load_file(str(run / "model.safetensors")) for run in (one, two))
    learned = [k for k in a if k.startswith("method_extension.")]
    assert learned and a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-4
    la = json.loads((one / "train.json").read_text())["losses"]
    lb = json.loads((two / "train.json").read_text())["losses"]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4


def test_two_ranks_resume_a_single_process_checkpoint(shared_colour_folder, tmp_path):
    """A run checkpointed by one process resumes on two (sharded) and ends as the uninterrupted
    run; checkpoints hold whole tensors, whatever wrote them."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = _train_args("mamf", shared_colour_folder, one)
    assert main(args) == 0
    settings = {"model": "tiny-random-clip", "seed": 312,
                "data": {"root": str(shared_colour_folder), "ways": 3},
                "train": {"method": "mamf", "lr": 1e-3, "steps": 8, "batch_size": 7,
                          "augment": True, "inner_lr": 0.01, "meta_batch": 3,
                          "checkpoint_every": 3}}
    assert dump_yaml(build_config(settings)) == (one / "config.yaml").read_text()  # as the CLI
    sharded = build_config(settings, {"train.parallel": "fsdp"})
    two.mkdir()
    (two / "config.yaml").write_text(dump_yaml(sharded))
    # one process stops after the checkpoint at step 3
    interrupted = build_config(settings, {"train.steps": 3})
    model, dataset, inputs = prepare(interrupted, fresh=True)
    train(model, inputs, dataset, interrupted, False, Checkpointer(two / "checkpoints", 3))
    assert (two / "checkpoints" / "latest.json").is_file()
    # FSDP: the whole checkpointed optimiser state is cut into shards, and gathered to save
    done = _torchrun(_train_args("mamf", shared_colour_folder, two,
                                 ("--set", "train.parallel=fsdp")), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming from the checkpoint" in done.stderr
    _assert_same_training(one, two)


def test_sharded_evaluation_writes_the_rows_of_one_process(shared_colour_folder, tmp_path):
    common = ["evaluate", "--model", "tiny-random-clip", "--data", str(shared_colour_folder),
              "--ways", "2,5", "--quiet", "--set", "metatest.lr=1e-3", "--set",
              "metatest.epochs=1", "--set", "metatest.augment=true"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    sharded = _torchrun([*common, "--out", str(tmp_path / "two")], tmp_path)
    assert sharded.returncode == 0, sharded.stderr
    one = [json.loads(x) for x in (tmp_path / "one" / "results.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}


@pytest.mark.parametrize("frozen", [
    ("train.freeze_image_backbone=true", "train.freeze_text_tower=true"),
    ("train.unfreeze_image_blocks=1", "train.unfreeze_text_layers=1", "train.augment=false"),
])
def test_ranks_share_the_frozen_backbone_features(shared_colour_folder, tmp_path, monkeypatch,
                                                  frozen):
    """Each rank computes part of the frozen-backbone features (or of the boundary below the
    last block; 100 images: chunks of 64 and 36); the gathered features equal one process's,
    bit for bit, and so do the rows."""
    common = ["evaluate", "--model", "tiny-random-clip", "--data", str(shared_colour_folder),
              "--ways", "5", "--quiet", *[a for key in frozen for a in ("--set", key)], "--set",
              "metatest.lr=1e-3"]
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache-one"))
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    done = _torchrun([*common, "--out", str(tmp_path / "two")], tmp_path,
                     MAMF_CACHE_DIR=str(tmp_path / "cache-two"))
    assert done.returncode == 0, done.stderr
    (a,), (b,) = (list((tmp_path / c).rglob("features-*.npz")) for c in ("cache-one",
                                                                          "cache-two"))
    assert np.array_equal(np.load(a)["features"], np.load(b)["features"])
    one, two = ((tmp_path / d / "results.jsonl").read_text() for d in ("one", "two"))
    assert [json.loads(x)["task_accs"] for x in one.splitlines()] == \
        [json.loads(x)["task_accs"] for x in two.splitlines()]


EXPERIMENT = """
name: two-ranks
model: tiny-random-clip
methods: [zeroshot, classical, mamf, fomaml]
seeds: [5]
settings:
  train: {{lr: 1.0e-3, steps: 6, batch_size: 8, inner_lr: 0.01, meta_batch: 2}}
  metatest: {{lr: 1.0e-3, epochs: 1}}
datasets:
  colours: {{root: {root}, ways: [2, 3]}}
"""


def test_experiment_under_torchrun_writes_one_process_file(shared_colour_folder, tmp_path):
    spec = tmp_path / "exp.yaml"
    spec.write_text(EXPERIMENT.format(root=shared_colour_folder))
    assert main(["experiment", str(spec), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    done = _torchrun(["experiment", str(spec), "--out", str(tmp_path / "two"), "--quiet"],
                     tmp_path)
    assert done.returncode == 0, done.stderr
    one = [json.loads(x) for x in (tmp_path / "one" / "results.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["ways"]) for r in one] == [(r["method"], r["ways"]) for r in two]
    assert {r["method"] for r in two} == {"zeroshot", "classical", "mamf", "fomaml"}
    assert len(two) == 8
    for a, b in zip(one, two):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
        assert abs(a.get("train_loss_last", 0) - b.get("train_loss_last", 0)) < 1e-4
    assert (tmp_path / "two" / "report.md").is_file()
    assert not (tmp_path / "two" / "failures.jsonl").exists()
    # a second launch finds every row done (rank 0's view, shared) and rewrites nothing
    again = _torchrun(["experiment", str(spec), "--out", str(tmp_path / "two"), "--quiet"],
                      tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert (tmp_path / "two" / "results.jsonl").read_text().count("\n") == 8


FROZEN_EXPERIMENT = """
name: two-ranks-frozen
model: tiny-random-clip
methods: [zeroshot, classical]
seeds: [5]
settings:
  data: {{protocol: episodic, shots: 1, queries: 1, tasks: 6}}
  train: {{lr: 1.0e-3, steps: 4, batch_size: 8, augment: false, freeze_image_backbone: true,
          freeze_text_tower: true}}
  metatest: {{lr: 1.0e-3, epochs: 1}}
datasets:
  colours: {{root: {root}, ways: [2]}}
"""


def test_frozen_features_of_only_the_images_read_are_shared_by_the_ranks(shared_colour_folder,
                                                                        tmp_path, monkeypatch):
    """The ranks compute the images an experiment reads (not dev) in shares and gather them:
    the same features file, the same rows, as one process."""
    spec = tmp_path / "exp.yaml"
    spec.write_text(FROZEN_EXPERIMENT.format(root=shared_colour_folder))
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache-one"))
    assert main(["experiment", str(spec), "--out", str(tmp_path / "one"), "--quiet"]) == 0
    done = _torchrun(["experiment", str(spec), "--out", str(tmp_path / "two"), "--quiet"],
                     tmp_path, MAMF_CACHE_DIR=str(tmp_path / "cache-two"))
    assert done.returncode == 0, done.stderr
    (a,), (b,) = (list((tmp_path / c).rglob("features-*.npz")) for c in ("cache-one",
                                                                          "cache-two"))
    with np.load(a) as one_file, np.load(b) as two_file:
        assert not one_file["have"].all()  # dev was never computed
        assert np.array_equal(one_file["have"], two_file["have"])
        assert np.array_equal(one_file["features"], two_file["features"])
    one, two = ((tmp_path / d / "results.jsonl").read_text() for d in ("one", "two"))
    assert [json.loads(x)["task_accs"] for x in one.splitlines()] == \
        [json.loads(x)["task_accs"] for x in two.splitlines()]


FAILING_RANK = """
import sys
import torch.distributed as dist
import mamf.methods.base
from mamf.cli import main

real = mamf.methods.base.predict  # what every method's default scoring calls

def predict(*args, **kwargs):
    if dist.get_rank() == 1:
        raise RuntimeError("rank 1 lost its accelerator")
    return real(*args, **kwargs)

mamf.methods.base.predict = predict
sys.exit(main(sys.argv[1:]))
"""


def test_a_failing_rank_ends_the_job_with_its_error(shared_colour_folder, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_RANK)
    started = time.monotonic()
    done = _torchrun(["evaluate", "--model", "tiny-random-clip", "--data",
                      str(shared_colour_folder), "--ways", "5", "--quiet", "--out",
                      str(tmp_path / "out")], tmp_path, script=str(script))
    assert done.returncode != 0
    assert "rank 1 lost its accelerator" in done.stderr
    assert time.monotonic() - started < 120  # torchrun stopped rank 0; nothing waited for a timeout
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_stuck_rank_times_out_instead_of_hanging(shared_colour_folder, tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(FAILING_RANK.replace('raise RuntimeError("rank 1 lost its accelerator")',
                                           "import time; time.sleep(600)"))
    started = time.monotonic()
    done = _torchrun(["evaluate", "--model", "tiny-random-clip", "--data",
                      str(shared_colour_folder), "--ways", "5", "--quiet", "--out",
                      str(tmp_path / "out")], tmp_path, script=str(script), timeout_s=10)
    assert done.returncode != 0
    assert "mamf: error: rank 0: no answer from another rank within MAMF_DIST_TIMEOUT=10 s" \
        in done.stderr
    assert time.monotonic() - started < 120


def test_a_user_error_under_torchrun_is_one_line_per_rank(shared_colour_folder, tmp_path):
    done = _torchrun(["train", "--method", "mamf", "--model", "tiny-random-clip", "--data",
                      str(shared_colour_folder), "--ways", "40", "--out", str(tmp_path / "r"),
                      "--quiet"], tmp_path)
    assert done.returncode != 0
    assert "mamf: error: rank 0: ways=40 is more than the 10 training classes" in done.stderr
    ours = done.stderr.split("torch/distributed/elastic")[0]  # torchrun then adds its own report
    assert "Traceback" not in ours and "rank 1: ways=40" in ours


def test_gradients_are_summed_over_ranks_only_under_torchrun():
    from mamf.parallel import distributed

    t = torch.ones(3)
    distributed.sum_tensors([t])  # a single process: nothing to sum
    assert torch.equal(t, torch.ones(3))
    assert distributed.sum_scalar(2.5) == 2.5
    assert distributed.from_main({"a": 1}) == {"a": 1}


def test_torchrun_evaluates_a_trained_run_with_the_readme_command(shared_colour_folder, tmp_path):
    """`torchrun ... -m mamf evaluate --run-dir RUN`: torchrun's parser lets the flag through
    (it took `--run` for its own --run-path), and the rows are those of one process."""
    run = tmp_path / "run"
    assert main(["train", "--method", "mamf", "--model", "tiny-random-clip", "--data",
                 str(shared_colour_folder), "--out", str(run), "--ways", "3", "--steps", "3",
                 "--quiet"]) == 0
    common = ["evaluate", "--run-dir", str(run), "--data", str(shared_colour_folder),
              "--ways", "3", "--quiet", "--set", "metatest.epochs=1"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    done = _torchrun([*common, "--out", str(tmp_path / "two")], tmp_path)
    assert done.returncode == 0, done.stderr
    one, two = ([json.loads(x) for x in (tmp_path / name / "results.jsonl").read_text()
                 .splitlines()] for name in ("one", "two"))
    assert len(one) == len(two) == 1
    assert {k: one[0][k] for k in KEYS} == {k: two[0][k] for k in KEYS}
