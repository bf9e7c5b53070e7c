"""Grids as cluster jobs through submitit, tested with its local executor (real subprocesses)."""

from __future__ import annotations

import json
import shutil

import pytest

from mamf.results import Row
from mamf.runs.experiment import load_experiment, run_experiment
from mamf.runs.launcher import SlurmSettings, launch
from mamf.system.errors import MamfError

pytest.importorskip("submitit")

VOLATILE = {"time_s", "train_time_s", "host", "date"}
LOCAL = SlurmSettings(time_min=10, cpus=1, cluster="local", max_jobs=1)


def _submitted(out) -> int:
    """Jobs submitit ran in `out` (one log each)."""
    return len(list((out / "submitit").glob("*_log.err")))


def _measurement(row: Row) -> dict:
    return {k: v for k, v in row.to_json().items() if k not in VOLATILE}


def _file(tmp_path, folder, methods=("zeroshot", "classical"), seeds=(1, 2), **train):
    import yaml

    raw = {"name": "tiny", "model": "tiny-random-clip", "methods": list(methods),
           "seeds": list(seeds),
           "settings": {"train": {"lr": 1e-3, "steps": 2, "augment": False, "batch_size": 8,
                                  **train},
                        "metatest": {"epochs": 1, "lr": 1e-3}},
           "datasets": {"colours": {"root": str(folder), "ways": [2, 3]}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_a_submitit_grid_equals_the_in_process_grid_and_reruns_only_what_is_missing(
        tmp_path, colour_folder, monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' processes
    threads = torch.get_num_threads()  # earlier tests may have left this process at another count
    torch.set_num_threads(1)  # the thread count is part of a CPU run's numbers and of its row
    exp = load_experiment(_file(tmp_path, colour_folder))
    try:
        here = run_experiment(exp, tmp_path / "here", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(here) == 2 * 2 * 2  # 4 units (2 methods x 2 seeds), each 2 task sizes

    out = tmp_path / "jobs"
    jobs = launch(exp, out, LOCAL)
    assert [_measurement(r) for r in jobs] == [_measurement(r) for r in here]
    assert len(list((out / "jobs").iterdir())) == 4  # one job, one file, per unit
    assert _submitted(out) == 4
    assert not list(out.rglob("*.pkl"))  # submitit's pickles are gone once each job ended
    assert {p.name for p in (out / "configs").iterdir()} == \
        {p.name for p in (tmp_path / "here" / "configs").iterdir()}
    # --max-jobs 1: each job started after the one before it ended
    spans = sorted((info["started"], info["ended"]) for info in (
        json.loads(p.read_text()) for p in (out / "jobs").glob("*/job.json")))
    assert len(spans) == 4 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))

    # a rerun with every row present submits nothing
    assert launch(exp, out, LOCAL) == jobs
    assert _submitted(out) == 4

    # losing one unit's rows (its job folder too): the rerun submits that unit alone
    lost = [r for r in jobs if not (r.method == "classical" and r.seed == 2)]
    (out / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in lost))
    for folder in (out / "jobs").iterdir():
        if folder.name.startswith("colours-classical-s2-"):
            shutil.rmtree(folder)
    again = launch(exp, out, LOCAL)
    assert _submitted(out) == 5
    key = lambda r: (r["method"], r["seed"], r["ways"])  # noqa: E731
    assert sorted(map(_measurement, again), key=lambda r: key(r)) == \
        sorted(map(_measurement, here), key=lambda r: key(r))


@pytest.mark.parametrize("flag,value", [("--slurm-time", "-5"), ("--slurm-time", "0"),
                                        ("--slurm-cpus", "0"), ("--max-jobs", "0"),
                                        ("--slurm-gpus", "-1"), ("--slurm-mem-gb", "0")])
def test_a_setting_no_job_could_run_with_is_one_error_line(tmp_path, colour_folder, capsys,
                                                          flag, value):
    from mamf.cli import main

    assert main(["experiment", str(_file(tmp_path, colour_folder)), "--out", str(tmp_path / "o"),
                 "--launcher", "submitit", "--submitit-cluster", "local", flag, value]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and flag in err[0]
    assert not (tmp_path / "o" / "jobs").exists()


def test_the_local_default_fits_the_cores_and_the_memory(monkeypatch):
    from mamf.runs import launcher

    monkeypatch.setattr(launcher.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(launcher, "_available_gb", lambda: 9.0)
    assert launcher.default_max_jobs(SlurmSettings(cpus=4)) == 4  # cores: 16 / 4
    assert launcher.default_max_jobs(SlurmSettings(cpus=1)) == 4  # memory: 9 GB / 2 GB
    assert launcher.default_max_jobs(SlurmSettings(cpus=1, mem_gb=1)) == 9
    monkeypatch.setattr(launcher, "_available_gb", lambda: 0.5)
    assert launcher.default_max_jobs(SlurmSettings(cpus=32)) == 1  # always one


def test_a_rerun_while_a_job_still_runs_is_refused(tmp_path, colour_folder):
    """A job of an earlier launch holds its unit's folder lock: the rerun submits nothing."""
    from mamf.runs.experiment import plan, unit_id, units_of
    from mamf.system.lock import exclusive

    exp = load_experiment(_file(tmp_path, colour_folder, methods=["classical"], seeds=[1]))
    out = tmp_path / "out"
    unit = [unit_id(p, u) for p in plan(exp, out, set())[0] for u in units_of(p)][0]
    with exclusive(out / "jobs" / unit), pytest.raises(MamfError, match="still run") as e:
        launch(exp, out, LOCAL)
    assert "\n" not in str(e.value) and not (out / "submitit").exists()


@pytest.mark.slow
def test_a_failed_unit_names_its_error(tmp_path, colour_folder, caplog, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    exp = load_experiment(_file(tmp_path, colour_folder, methods=["classical"], seeds=[1],
                                lr=1e30, steps=5))
    out = tmp_path / "out"
    with caplog.at_level("ERROR", logger="mamf"):
        launch(exp, out, LOCAL)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and all("-----" not in e and "log" not in e for e in errors)
    assert any("training loss became" in e for e in errors), errors
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures and all(f["unit"].startswith("colours-classical-s1-") for f in failures)
    assert "training loss became" in failures[0]["error"]
    assert not (out / "jobs" / failures[0]["unit"] / "failures.jsonl").exists()


@pytest.mark.slow
def test_ctrl_c_cancels_every_job_it_started_and_says_so(tmp_path, colour_folder):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from mamf.system.lock import exclusive

    source = _file(tmp_path, colour_folder, methods=["classical"], seeds=[1, 2, 3], steps=5000)
    out = tmp_path / "out"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "mamf", "experiment", str(source), "--out", str(out),
         "--launcher", "submitit", "--submitit-cluster", "local", "--max-jobs", "2", "--quiet"],
        env=env, stderr=subprocess.PIPE, text=True,
        # Ctrl-C's default: a shell that starts a test run in the background (`&`, no job
        # control) hands it SIGINT ignored, and the launcher would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("jobs/*/job.json"))) < 2 and time.monotonic() < deadline:
            assert launcher.poll() is None, launcher.stderr.read()
            time.sleep(0.2)
        pids = [json.loads(p.read_text())["pid"] for p in out.glob("jobs/*/job.json")]
        assert len(pids) == 2
        launcher.send_signal(signal.SIGINT)  # the launcher alone: it must stop its jobs itself
        err = launcher.communicate(timeout=120)[1]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130
    assert "cancelled 2 running job(s)" in err and "started none of the 1 waiting" in err
    for pid in pids:  # every job's process is gone, reaped by its parent or by init
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(pid)
    for folder in (out / "jobs").iterdir():  # no job holds its folder
        with exclusive(folder):
            pass


def _alive(pid: int) -> bool:
    import os
    from pathlib import Path

    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and os.path.exists(f"/proc/{pid}")
