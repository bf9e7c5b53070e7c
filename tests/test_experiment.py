"""Experiment grids: expansion, resumption without duplicates, shared test tasks, the summary."""

from __future__ import annotations

import json

import pytest
import yaml

from mamf.cli import main
from mamf.report import accuracy_table
from mamf.results import Row
from mamf.runs.experiment import load_experiment, parse_experiment, run_experiment
from mamf.system.errors import MamfError
from mamf.system.io import read_jsonl


def experiment_file(tmp_path, folder, **extra):
    raw = {
        "name": "tiny", "model": "tiny-random-clip", "methods": ["zeroshot", "classical", "mamf"],
        "seeds": [1, 2],
        "settings": {"train": {"lr": 1e-3, "epochs": 1, "augment": False},
                     "metatest": {"epochs": 1, "lr": 1e-3}},
        "datasets": {"colours": {"root": str(folder), "ways": [2, 3]}},
        **extra,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_grid_runs_once_and_resumes_without_duplicates(tmp_path, colour_folder):
    exp = load_experiment(experiment_file(tmp_path, colour_folder))
    out = tmp_path / "out"
    rows = run_experiment(exp, out, progress=False)
    keys = [(r.method, r.ways, r.seed) for r in rows]
    assert len(keys) == len(set(keys)) == 3 * 2 * 2
    # methods of one (ways, seed) meet the same tasks: same count, same query sizes
    by = {}
    for r in rows:
        by.setdefault((r.ways, r.seed), set()).add(r.n_tasks)
    assert all(len(v) == 1 for v in by.values())
    # a rerun does nothing; deleting rows recomputes exactly those, with the same numbers
    assert run_experiment(exp, out, progress=False) == rows
    kept = [r for r in rows if not (r.method == "mamf" and r.seed == 2)]
    (out / "results.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in kept))
    again = run_experiment(exp, out, progress=False)
    assert len(again) == len(rows)
    redone = {r.ways: r.task_accs for r in again if r.method == "mamf" and r.seed == 2}
    first = {r.ways: r.task_accs for r in rows if r.method == "mamf" and r.seed == 2}
    assert redone == first
    table = accuracy_table(again)
    assert "MAMF" in table and "colours" in table


def test_a_failing_run_does_not_stop_the_grid(tmp_path, colour_folder):
    path = experiment_file(tmp_path, colour_folder, datasets={
        "colours": {"root": str(colour_folder), "ways": [2, 9]}})
    rows = run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    assert {r.ways for r in rows} == {2}
    failures = read_jsonl(tmp_path / "out" / "failures.jsonl")
    assert failures and "ways=9" in failures[0]["error"]


@pytest.mark.parametrize("raw, message", [
    ({"datasets": {"a": {"root": "x"}}, "methods": ["sgd"]}, "unknown method"),
    ({"datasets": {"a": {"root": "x"}}, "colour": 1}, "unknown experiment key"),
    ({"datasets": {"a": {}}}, "exactly one of 'root'"),
    ({"datasets": {"a": {"root": "x", "settings": {"train": {"lr": "x"}}}}}, "train.lr"),
    ({"datasets": {"a": {"root": "x"}}, "method_settings": {"mamf": {"data": {}}}},
     "only hold train, metatest and baseline"),
])
def test_bad_experiment_files_are_refused(raw, message):
    with pytest.raises(MamfError, match=message):
        parse_experiment(raw)


def test_experiment_and_report_commands(tmp_path, colour_folder, capsys):
    path = experiment_file(tmp_path, colour_folder, methods=["zeroshot"], seeds=[1])
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / "figures" / "summary.png").stat().st_size > 0
    assert "Claim 1" in (out / "report.md").read_text()
    assert "data:image/png;base64" in (out / "report.html").read_text()
    assert main(["report", str(out)]) == 0
    assert "zero-shot" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_experiment_resumes_without_duplicates(tmp_path, colour_folder):
    import os
    import signal
    import subprocess
    import sys
    import time

    path = experiment_file(tmp_path, colour_folder, seeds=[1, 2, 3])
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "mamf", "experiment", str(path), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not results.exists() or len(read_jsonl(results)) < 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(read_jsonl(results))
    assert 2 <= partial < 18
    with results.open("a") as f:
        f.write('{"method": "torn')  # as if killed mid-write
    rows = run_experiment(load_experiment(path), out, progress=False)
    keys = [(r.method, r.ways, r.seed) for r in rows]
    assert len(keys) == len(set(keys)) == 18


VOLATILE = {"time_s", "train_time_s", "host", "date"}


def _measurement(row: Row) -> dict:
    return {k: v for k, v in row.to_json().items() if k not in VOLATILE}


def test_a_grid_killed_between_any_two_rows_resumes_to_the_same_rows(tmp_path, colour_folder):
    """Kill after k rows, for every k: the resumed grid writes exactly the uninterrupted rows.

    Classical and zero-shot train once for all task sizes, and random heads are drawn per seed:
    neither may depend on which rows happened to be left to compute."""
    path = experiment_file(tmp_path, colour_folder,
                           methods=["classical", "mamf"],
                           settings={"train": {"lr": 1e-3, "steps": 3, "augment": False,
                                               "heads": "random", "batch_size": 8},
                                     "metatest": {"epochs": 1, "lr": 1e-3}})
    exp = load_experiment(path)
    full = run_experiment(exp, tmp_path / "full", progress=False)
    assert len(full) == 2 * 2 * 2
    lines = (tmp_path / "full" / "results.jsonl").read_text().splitlines(keepends=True)
    for k in range(1, len(lines)):
        out = tmp_path / f"killed-{k}"
        out.mkdir()
        (out / "results.jsonl").write_text("".join(lines[:k]))
        resumed = run_experiment(exp, out, progress=False)
        assert [_measurement(r) for r in resumed] == [_measurement(r) for r in full], (
            f"resumed after {k} rows: {json.dumps(_measurement(resumed[k]))[:200]}")


def test_a_grid_without_a_methods_list_runs_the_papers_methods_not_the_baselines():
    exp = parse_experiment({"datasets": {"a": {"root": "x"}}})
    assert exp.methods == ["zeroshot", "classical", "mamf", "fomaml"]
    named = parse_experiment({"datasets": {"a": {"root": "x"}}, "methods": ["tip-adapter"]})
    assert named.methods == ["tip-adapter"]


def test_entries_that_build_the_same_dataset_share_one_build(tmp_path, monkeypatch):
    """A dataset studied under several settings (another training match, frozen or not) is
    built once, in the first entry's folder; other build options get their own."""
    from mamf.data import builders
    from mamf.runs.experiment import dataset_root

    built = []
    monkeypatch.setattr(builders, "build", lambda name, folder, log, **options:
                        built.append(folder) or folder)
    exp = parse_experiment({"methods": ["zeroshot"], "datasets": {
        "a": {"build": "counting", "build_options": {"per_class": 3}},
        "b": {"build": "counting", "build_options": {"per_class": 3},
              "settings": {"data": {"train_match": "x"}}},
        "c": {"build": "counting", "build_options": {"per_class": 4}}}})
    roots = [dataset_root(ds, tmp_path, exp.datasets) for ds in exp.datasets]
    assert roots == [str(tmp_path / "data" / n) for n in ("a", "a", "c")]


def test_a_dataset_sets_one_methods_settings_over_the_experiments():
    """A rate chosen on one dataset's dev split for one method applies there only."""
    from mamf.runs.experiment import run_config

    exp = parse_experiment({
        "methods": ["classical", "mamf"], "settings": {"train": {"lr": 1e-3}},
        "method_settings": {"mamf": {"train": {"lr": 1e-2}}},
        "datasets": {"a": {"root": "x", "method_settings": {"mamf": {"train": {"lr": 1e-4}}}},
                     "b": {"root": "y"}}})
    lr = {(ds.name, m): run_config(exp, ds, m, 312, "/r").train.lr
          for ds in exp.datasets for m in exp.methods}
    assert lr == {("a", "classical"): 1e-3, ("a", "mamf"): 1e-4,
                  ("b", "classical"): 1e-3, ("b", "mamf"): 1e-2}
    with pytest.raises(MamfError, match="cannot change"):
        parse_experiment({"datasets": {"a": {"root": "x", "method_settings": {
            "mamf": {"train": {"unfreeze_image_blocks": 1}}}}}})
    with pytest.raises(MamfError, match="unknown method"):
        parse_experiment({"datasets": {"a": {"root": "x", "method_settings": {"sgd": {}}}}})


@pytest.mark.parametrize("key, value", [
    ("shots", []), ("shots", [0]), ("shots", "4"), ("shots", [1, 1]),
    ("splits", ["test", "val"]), ("splits", []), ("splits", ["test", "test"]),
])
def test_bad_shots_and_splits_axes_are_refused(key, value):
    with pytest.raises(MamfError, match=f"'{key}'"):
        parse_experiment({"datasets": {"a": {"root": "x"}}, key: value})


def test_a_skipped_dataset_is_not_called_nothing_to_do(tmp_path, caplog):
    import logging

    from mamf.runs.experiment import load_experiment, run_experiment

    (tmp_path / "empty").mkdir()
    path = tmp_path / "e.yaml"
    path.write_text(f"""
name: e
model: tiny-random-clip
methods: [zeroshot]
seeds: [1]
datasets: {{gone: {{root: {tmp_path / "empty"}}}}}
""")
    with caplog.at_level(logging.INFO):
        assert run_experiment(load_experiment(path), tmp_path / "out", progress=False) == []
    assert "nothing to do" not in caplog.text
    assert "nothing computed: dataset(s) gone skipped" in caplog.text


def test_a_resume_says_which_finished_rows_another_mamf_computed(tmp_path, colour_folder,
                                                                 caplog):
    """Rows are kept by their place in the grid, whatever code made them, so a method whose
    rules changed since is not recomputed: the resume says so instead of staying silent."""
    import logging

    from mamf.results import this_code

    path = experiment_file(tmp_path, colour_folder, methods=["zeroshot"], seeds=[1])
    out = tmp_path / "out"
    rows = run_experiment(load_experiment(path), out, progress=False)
    with caplog.at_level(logging.WARNING):
        run_experiment(load_experiment(path), out, progress=False)
    assert "another mamf" not in caplog.text  # this code's own rows
    lines = (out / "results.jsonl").read_text().splitlines()
    older = {**json.loads(lines[0]), "mamf": "0.0.1", "mamf_commit": "0123456789abcdef"}
    (out / "results.jsonl").write_text("\n".join([json.dumps(older), *lines[1:]]) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(run_experiment(load_experiment(path), out, progress=False)) == len(rows)
    version, commit = this_code()
    assert f"1 of the {len(rows)} finished rows" in caplog.text
    assert "another mamf (0.0.1, commit 0123456; this one is " + version in caplog.text
