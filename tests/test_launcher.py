"""Grids as cluster jobs through submitit, tested with its local executor (real subprocesses)."""

from __future__ import annotations

import json
import shutil

import pytest

from mamf.results import Row
from mamf.runs.experiment import load_experiment, run_experiment
from mamf.runs.launcher import SlurmSettings, launch

pytest.importorskip("submitit")

VOLATILE = {"time_s", "train_time_s", "host", "date"}
LOCAL = SlurmSettings(time_min=10, cpus=1, cluster="local")


def _measurement(row: Row) -> dict:
    return {k: v for k, v in row.to_json().items() if k not in VOLATILE}


def _file(tmp_path, folder):
    import yaml

    raw = {"name": "tiny", "model": "tiny-random-clip", "methods": ["zeroshot", "classical"],
           "seeds": [1, 2],
           "settings": {"train": {"lr": 1e-3, "steps": 2, "augment": False, "batch_size": 8},
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
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 4
    assert {p.name for p in (out / "configs").iterdir()} == \
        {p.name for p in (tmp_path / "here" / "configs").iterdir()}

    # a rerun with every row present submits nothing
    assert launch(exp, out, LOCAL) == jobs
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 4

    # losing one unit's rows (its job folder too): the rerun submits that unit alone
    lost = [r for r in jobs if not (r.method == "classical" and r.seed == 2)]
    (out / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in lost))
    for folder in (out / "jobs").iterdir():
        if folder.name.startswith("colours-classical-s2-"):
            shutil.rmtree(folder)
    again = launch(exp, out, LOCAL)
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 5
    key = lambda r: (r["method"], r["seed"], r["ways"])  # noqa: E731  (of a _measurement)
    assert sorted(map(_measurement, again), key=lambda r: key(r)) == \
        sorted(map(_measurement, here), key=lambda r: key(r))
