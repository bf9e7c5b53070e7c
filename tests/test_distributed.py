"""Under torchrun (gloo, 2 CPU processes): data-parallel training takes one process's steps,
sharded evaluation and experiments write one process's rows, and a failing rank ends the job.

The commands that must end as one process's share one launch (the `shared` fixture: starting
torchrun is most of a case's time); those that end the job launch on their own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

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


def _torchrun(args, cwd, script=None, timeout_s=60, overall_s=300, **env_vars):
    target = [script] if script else ["-m", "mamf"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MAMF_DIST_TIMEOUT=str(timeout_s), **env_vars)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *target, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=overall_s)


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


WEIGHTS = [
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
]
LORA = ("--set", "train.adapter=lora", "--set", "train.augment=false")
PROMPT = ("--set", "baseline.coop_lr=0.1", "--set", "baseline.cocoop_lr=0.1")
# the trainings run by one process and by two ranks, by case name
TRAININGS = {**{f"weights-{i}": case for i, case in enumerate(WEIGHTS)},
             **{f"lora-{m}": (m, LORA) for m in ("classical", "mamf")},
             **{f"prompt-{m}": (m, PROMPT) for m in ("coop", "cocoop")}}
SETTINGS = {"model": "tiny-random-clip", "seed": 312, "data": {"ways": 3},
            "train": {"method": "mamf", "lr": 1e-3, "steps": 8, "batch_size": 7, "augment": True,
                      "inner_lr": 0.01, "meta_batch": 3, "checkpoint_every": 3}}
EVALUATE = ["evaluate", "--model", "tiny-random-clip", "--ways", "2,5", "--quiet", "--set",
            "metatest.lr=1e-3", "--set", "metatest.epochs=1", "--set", "metatest.augment=true"]
FROZEN = [("train.freeze_image_backbone=true", "train.freeze_text_tower=true"),
          ("train.unfreeze_image_blocks=1", "train.unfreeze_text_layers=1", "train.augment=false")]


class Done:
    """One case of the shared launch, as `_torchrun` returns a launch: the exit code (the first
    failing rank's), and stdout and stderr (rank 0's, then rank 1's)."""

    def __init__(self, logs, name, launch):
        records = []
        for rank in (0, 1):
            file = logs / f"{name}.rank{rank}.json"
            assert file.is_file(), f"case {name} did not run on rank {rank}: {launch.stderr[-3000:]}"
            records.append(json.loads(file.read_text()))
        self.records = records
        self.returncode = next((r["returncode"] for r in records if r["returncode"] != 0), 0)
        self.stdout, self.stderr = ("".join((logs / f"{name}.rank{rank}.{kind}").read_text()
                                            for rank in (0, 1)) for kind in ("out", "err"))


class Shared:
    """The outputs of the single-process runs and of the one two-rank launch, by case."""

    def __init__(self, root, launch, single):
        self.root, self.launch, self.single = root, launch, single

    def folder(self, name):
        return self.root / name

    def done(self, name):
        return Done(self.root / "logs", name, self.launch)


def attempt(function, *args):
    """`function(*args)`, or the error it raised: a test reads it, and fails alone."""
    try:
        return function(*args)
    except Exception as e:
        return f"raised {e!r}"


def _checkpoint_in_one_process(data, root):
    """Resume's start: the uninterrupted run in one; in two, the settings as the CLI writes them
    (sharded) and a checkpoint at step 3 of one process, which stops there."""
    one, two = root / "one", root / "two"
    settings = {**SETTINGS, "data": {**SETTINGS["data"], "root": data}}
    code = main(_train_args("mamf", data, one))
    assert dump_yaml(build_config(settings)) == (one / "config.yaml").read_text()  # as the CLI
    two.mkdir()
    (two / "config.yaml").write_text(dump_yaml(build_config(settings, {"train.parallel": "fsdp"})))
    interrupted = build_config(settings, {"train.steps": 3})
    model, dataset, inputs = prepare(interrupted, fresh=True)
    train(model, inputs, dataset, interrupted, False, Checkpointer(two / "checkpoints", 3))
    assert (two / "checkpoints" / "latest.json").is_file()
    return code


@pytest.fixture(scope="module")
def shared(shared_colour_folder, tmp_path_factory):
    """Every two-rank case that must end as one process: each test's single-process run here,
    then all two-rank runs in one torchrun launch (its start-up is most of a case's time); each
    test then reads its own case."""
    root, data = tmp_path_factory.mktemp("two-ranks"), str(shared_colour_folder)
    cache = str(tmp_path_factory.getbasetemp() / "mamf-cache")
    cases, single = [], {}

    def case(name, args, cache_dir=cache):
        cases.append({"name": name, "args": [str(a) for a in args],
                      "env": {"MAMF_CACHE_DIR": cache_dir}})

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAMF_CACHE_DIR", cache)
        for name, (method, extra) in TRAININGS.items():
            single[name] = attempt(main, _train_args(method, data, root / name / "one", extra))
            case(name, _train_args(method, data, root / name / "two", extra))

        single["resume"] = attempt(_checkpoint_in_one_process, data, root / "resume")
        case("resume", _train_args("mamf", data, root / "resume" / "two",
                                   ("--set", "train.parallel=fsdp")))

        common = [*EVALUATE, "--data", data]
        single["evaluate"] = attempt(main, [*common, "--out", str(root / "evaluate" / "one")])
        case("evaluate", [*common, "--out", root / "evaluate" / "two"])

        for i, frozen in enumerate(FROZEN):
            name = f"frozen-{i}"
            common = ["evaluate", "--model", "tiny-random-clip", "--data", data, "--ways", "5",
                      "--quiet", *[a for key in frozen for a in ("--set", key)], "--set",
                      "metatest.lr=1e-3"]
            mp.setenv("MAMF_CACHE_DIR", str(root / name / "cache-one"))
            single[name] = attempt(main, [*common, "--out", str(root / name / "one")])
            mp.setenv("MAMF_CACHE_DIR", cache)
            case(name, [*common, "--out", root / name / "two"], str(root / name / "cache-two"))

        for name, text in [("experiment", EXPERIMENT), ("frozen-experiment", FROZEN_EXPERIMENT)]:
            spec = root / name / "exp.yaml"
            spec.parent.mkdir()
            spec.write_text(text.format(root=data))
            own_cache = name == "frozen-experiment"
            if own_cache:
                mp.setenv("MAMF_CACHE_DIR", str(root / name / "cache-one"))
            single[name] = attempt(main, ["experiment", str(spec), "--out",
                                          str(root / name / "one"), "--quiet"])
            mp.setenv("MAMF_CACHE_DIR", cache)
            args = ["experiment", spec, "--out", root / name / "two", "--quiet"]
            case(name, args, str(root / name / "cache-two") if own_cache else cache)
            if name == "experiment":  # run again: it finds every row done
                case("experiment-again", args)

        run = root / "readme" / "run"
        single["readme-train"] = attempt(main, ["train", "--method", "mamf", "--model",
                                                "tiny-random-clip", "--data", data, "--out",
                                                str(run), "--ways", "3", "--steps", "3",
                                                "--quiet"])
        common = ["evaluate", "--run-dir", str(run), "--data", data, "--ways", "3", "--quiet",
                  "--set", "metatest.epochs=1"]
        single["readme"] = attempt(main, [*common, "--out", str(root / "readme" / "one")])
        case("readme", [*common, "--out", root / "readme" / "two"])

    (root / "logs").mkdir()
    (root / "cases.json").write_text(json.dumps(cases))
    driver = os.path.join(os.path.dirname(__file__), "two_ranks.py")
    launch = _torchrun([str(root / "cases.json"), str(root / "logs")], root, script=driver,
                       overall_s=1800)
    return Shared(root, launch, single)


@pytest.mark.parametrize("name", [f"weights-{i}" for i in range(len(WEIGHTS))])
def test_two_ranks_train_the_weights_of_one_process(shared, shared_colour_folder, name):
    _, extra = TRAININGS[name]
    one, two = shared.folder(name) / "one", shared.folder(name) / "two"
    assert shared.single[name] == 0
    done = shared.done(name)
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


def test_a_rank_leaves_no_gloo_thread_behind(shared):
    """After a command, the process group's threads have ended, while the interpreter is whole.
    A group kept alive past `shutdown` keeps them to the interpreter's exit, whose teardown of
    them now and then aborted a finished rank ("terminate called without an active exception"):
    torch.distributed.nn, imported by DDP after the group existed, held it in its functions'
    default arguments. FSDP's cases are left out: DTensor still holds their device mesh."""
    for name, (_, extra) in TRAININGS.items():
        if "train.parallel=fsdp" in extra:
            continue
        for rank, record in enumerate(shared.done(name).records):
            if record["gloo_before"] is None:
                pytest.skip("thread names are read from /proc (Linux)")
            assert record["gloo_after"] == record["gloo_before"], (name, rank, record)


@pytest.mark.parametrize("method", ["classical", "mamf"])
def test_two_ranks_train_the_lora_adapter_of_one_process(shared, method):
    """LoRA under DDP: the adapter two ranks train is the one a single process trains."""
    name = f"lora-{method}"
    one, two = shared.folder(name) / "one", shared.folder(name) / "two"
    assert shared.single[name] == 0
    done = shared.done(name)
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
def test_two_ranks_train_the_prompt_context_of_one_process(shared, method):
    """CoOp and CoCoOp share each batch across the ranks and sum the context's gradient."""
    name = f"prompt-{method}"
    one, two = shared.folder(name) / "one", shared.folder(name) / "two"
    assert shared.single[name] == 0
    done = shared.done(name)
    assert done.returncode == 0, done.stderr
    assert json.loads((two / "train.json").read_text())["processes"] == 2
    a, b = (load_file(str(run / "model.safetensors")) for run in (one, two))
    learned = [k for k in a if k.startswith("method_extension.")]
    assert learned and a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 2e-4
    la = json.loads((one / "train.json").read_text())["losses"]
    lb = json.loads((two / "train.json").read_text())["losses"]
    assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4


def test_two_ranks_resume_a_single_process_checkpoint(shared):
    """A run checkpointed by one process resumes on two (sharded) and ends as the uninterrupted
    run; checkpoints hold whole tensors, whatever wrote them."""
    assert shared.single["resume"] == 0  # and the fixture's settings are the CLI's
    # FSDP: the whole checkpointed optimiser state is cut into shards, and gathered to save
    done = shared.done("resume")
    assert done.returncode == 0, done.stderr
    assert "resuming from the checkpoint" in done.stderr
    _assert_same_training(shared.folder("resume") / "one", shared.folder("resume") / "two")


def _rows(folder):
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]


def test_sharded_evaluation_writes_the_rows_of_one_process(shared):
    assert shared.single["evaluate"] == 0
    sharded = shared.done("evaluate")
    assert sharded.returncode == 0, sharded.stderr
    one, two = (_rows(shared.folder("evaluate") / d) for d in ("one", "two"))
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}


@pytest.mark.parametrize("name", [f"frozen-{i}" for i in range(len(FROZEN))])
def test_ranks_share_the_frozen_backbone_features(shared, name):
    """Each rank computes part of the frozen-backbone features (or of the boundary below the
    last block; 100 images: chunks of 64 and 36); the gathered features equal one process's,
    bit for bit, and so do the rows."""
    root = shared.folder(name)
    assert shared.single[name] == 0
    done = shared.done(name)
    assert done.returncode == 0, done.stderr
    (a,), (b,) = (list((root / c).rglob("features-*.npz")) for c in ("cache-one", "cache-two"))
    assert np.array_equal(np.load(a)["features"], np.load(b)["features"])
    one, two = (_rows(root / d) for d in ("one", "two"))
    assert [x["task_accs"] for x in one] == [x["task_accs"] for x in two]


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


def test_experiment_under_torchrun_writes_one_process_file(shared):
    root = shared.folder("experiment")
    assert shared.single["experiment"] == 0
    done = shared.done("experiment")
    assert done.returncode == 0, done.stderr
    one, two = _rows(root / "one"), _rows(root / "two")
    assert [(r["method"], r["ways"]) for r in one] == [(r["method"], r["ways"]) for r in two]
    assert {r["method"] for r in two} == {"zeroshot", "classical", "mamf", "fomaml"}
    assert len(two) == 8
    for a, b in zip(one, two):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}
        assert abs(a.get("train_loss_last", 0) - b.get("train_loss_last", 0)) < 1e-4
    assert (root / "two" / "report.md").is_file()
    assert not (root / "two" / "failures.jsonl").exists()
    # a second launch finds every row done (rank 0's view, shared) and rewrites nothing
    again = shared.done("experiment-again")
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert (root / "two" / "results.jsonl").read_text().count("\n") == 8


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


def test_frozen_features_of_only_the_images_read_are_shared_by_the_ranks(shared):
    """The ranks compute the images an experiment reads (not dev) in shares and gather them:
    the same features file, the same rows, as one process."""
    root = shared.folder("frozen-experiment")
    assert shared.single["frozen-experiment"] == 0
    done = shared.done("frozen-experiment")
    assert done.returncode == 0, done.stderr
    (a,), (b,) = (list((root / c).rglob("features-*.npz")) for c in ("cache-one", "cache-two"))
    with np.load(a) as one_file, np.load(b) as two_file:
        assert not one_file["have"].all()  # dev was never computed
        assert np.array_equal(one_file["have"], two_file["have"])
        assert np.array_equal(one_file["features"], two_file["features"])
    one, two = _rows(root / "one"), _rows(root / "two")
    assert [x["task_accs"] for x in one] == [x["task_accs"] for x in two]


def test_torchrun_evaluates_a_trained_run_with_the_readme_command(shared):
    """`torchrun ... -m mamf evaluate --run-dir RUN`: torchrun's parser lets the flag through
    (it took `--run` for its own --run-path), and the rows are those of one process."""
    assert shared.single["readme-train"] == 0
    assert shared.single["readme"] == 0
    done = shared.done("readme")
    assert done.returncode == 0, done.stderr
    one, two = (_rows(shared.folder("readme") / d) for d in ("one", "two"))
    assert len(one) == len(two) == 1
    assert {k: one[0][k] for k in KEYS} == {k: two[0][k] for k in KEYS}


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
    # collectives would wait longer than the launch may last (TimeoutExpired fails the test)
    done = _torchrun(["evaluate", "--model", "tiny-random-clip", "--data",
                      str(shared_colour_folder), "--ways", "5", "--quiet", "--out",
                      str(tmp_path / "out")], tmp_path, script=str(script), timeout_s=3600)
    assert done.returncode != 0
    assert "rank 1 lost its accelerator" in done.stderr
    assert "no answer from another rank" not in done.stderr  # torchrun stopped rank 0
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_stuck_rank_times_out_instead_of_hanging(shared_colour_folder, tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(FAILING_RANK.replace('raise RuntimeError("rank 1 lost its accelerator")',
                                           "import time; time.sleep(600)"))
    done = _torchrun(["evaluate", "--model", "tiny-random-clip", "--data",
                      str(shared_colour_folder), "--ways", "5", "--quiet", "--out",
                      str(tmp_path / "out")], tmp_path, script=str(script), timeout_s=10)
    assert done.returncode != 0  # a hang would raise TimeoutExpired (the rank sleeps 600 s)
    assert "mamf: error: rank 0: no answer from another rank within MAMF_DIST_TIMEOUT=10 s" \
        in done.stderr


def test_a_user_error_under_torchrun_is_one_line_per_rank(shared_colour_folder, tmp_path):
    done = _torchrun(["train", "--method", "mamf", "--model", "tiny-random-clip", "--data",
                      str(shared_colour_folder), "--ways", "40", "--out", str(tmp_path / "r"),
                      "--quiet"], tmp_path)
    assert done.returncode != 0
    assert "mamf: error: rank 0: ways=40 is more than the 10 training classes" in done.stderr
    ours = done.stderr.split("torch/distributed/elastic")[0]  # torchrun then adds its own report
    assert "Traceback" not in ours and "rank 1: ways=40" in ours


def test_a_rank_late_to_the_start_is_a_timeout(monkeypatch):
    """On a loaded machine a rank may reach the start more than MAMF_DIST_TIMEOUT after another
    (still importing): torch's store then says "wait timeout", a timeout's one error line too."""
    from torch.distributed import DistStoreError

    from mamf.parallel import distributed

    late = DistStoreError("wait timeout after 10000ms, keys: /default_pg/0//cpu//0/1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.timed_out(late)
    assert not distributed.timed_out(RuntimeError("rank 1 lost its accelerator"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.timed_out(late)  # one process waits for no other


def test_gradients_are_summed_over_ranks_only_under_torchrun():
    from mamf.parallel import distributed

    t = torch.ones(3)
    distributed.sum_tensors([t])  # a single process: nothing to sum
    assert torch.equal(t, torch.ones(3))
    assert distributed.sum_scalar(2.5) == 2.5
    assert distributed.from_main({"a": 1}) == {"a": 1}

