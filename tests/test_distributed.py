"""Under torchrun (gloo, 2 CPU processes) evaluate shards its tasks and writes a single process's rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

KEYS = ("method", "dataset", "protocol", "ways", "shots", "queries", "seed", "split", "n_tasks",
        "acc_mean", "acc_ci95", "task_accs")


def _run(args, env, cwd):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sharded_evaluation_writes_the_rows_of_one_process(shared_colour_folder, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               MAMF_DIST_TIMEOUT="120")
    common = ["evaluate", "--model", "tiny-random-clip", "--data", str(shared_colour_folder),
              "--ways", "2,5", "--quiet", "--set", "metatest.lr=1e-3", "--set",
              "metatest.epochs=1"]
    single = _run([sys.executable, "-m", "mamf", *common, "--out", str(tmp_path / "one")],
                  env, tmp_path)
    assert single.returncode == 0, single.stderr
    sharded = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    "--standalone", "-m", "mamf", *common, "--out", str(tmp_path / "two")],
                   env, tmp_path)
    assert sharded.returncode == 0, sharded.stderr
    one = [json.loads(x) for x in (tmp_path / "one" / "results.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "results.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert {k: a[k] for k in KEYS} == {k: b[k] for k in KEYS}


def test_train_under_torchrun_is_refused_clearly(shared_colour_folder, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                 "--standalone", "-m", "mamf", "train", "--method", "mamf", "--model",
                 "tiny-random-clip", "--data", str(shared_colour_folder), "--out",
                 str(tmp_path / "run"), "--quiet"], env, tmp_path)
    assert done.returncode != 0
    assert "does not run under torchrun yet" in done.stderr
