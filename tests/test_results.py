"""results.jsonl read back: damaged lines skipped with a count, each measurement once."""

from __future__ import annotations

import json
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamf.results import KEY_FIELDS, read_rows, row_key, row_problem


def row(**over) -> dict:
    r = {"method": "mamf", "model": "tiny-random-clip", "dataset": "colours",
         "protocol": "paper", "ways": 3, "shots": 2, "queries": 2, "seed": 312, "split": "test",
         "n_tasks": 2, "acc_mean": 0.75, "acc_ci95": 0.49, "task_accs": [0.5, 1.0],
         "time_s": 0.1, "run": None}
    r.update(over)
    return r


def write(path, lines: list[bytes]):
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    return path


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def test_a_written_row_is_valid_and_its_key_names_the_measurement():
    r = row()
    assert row_problem(r) is None
    # a MAMF row from before rows named their sampler was drawn uniformly; one from before
    # WiSE-FT scored the trained weights (alpha None)
    assert row_key(r) == ("colours", "mamf", "tiny-random-clip", None, "paper", 3, 2, 2, 312,
                          "test", "uniform", None)
    assert row_key(row(sampler="uniform")) == row_key(r)
    assert row_key(row(sampler="similar")) != row_key(r)  # another sampler, another measurement
    assert len(row_key(r)) == len(KEY_FIELDS)
    # an experiment's own name for the dataset wins; another run or model is another measurement
    assert row_key(row(experiment_dataset="colours-6"))[0] == "colours-6"
    assert row_key(row(run="runs/a")) != row_key(row(run="runs/b"))
    assert row_key(row(model="other")) != row_key(r)
    # what is not part of the measurement is not part of the key
    assert row_key(row(time_s=9.0, host="elsewhere", config_id="x")) == row_key(r)


def test_rows_that_are_not_rows_are_named():
    bad = {
        "list": [1, 2, 3], "string": "x", "empty": {}, "no task_accs": _without("task_accs"),
        "no method": _without("method"), "no ways": _without("ways"),
        "no seed": _without("seed"), "task_accs text": row(task_accs="abc"),
        "task_accs empty": row(task_accs=[], n_tasks=0), "acc above 1": row(task_accs=[0.5, 1.5]),
        "acc negative": row(task_accs=[-0.1, 0.5]), "acc NaN": row(task_accs=[float("nan"), 0.5]),
        "acc infinite": row(task_accs=[float("inf"), 0.5]), "acc bool": row(task_accs=[True, 0.5]),
        "acc text": row(task_accs=["0.5", 0.5]), "ways float": row(ways=3.0),
        "ways bool": row(ways=True), "ways 1": row(ways=1), "seed text": row(seed="312"),
        "dataset empty": row(dataset=""),
        "dataset number": row(dataset=7), "run number": row(run=5),
        "n_tasks disagrees": row(n_tasks=3), "experiment_dataset list": row(experiment_dataset=[]),
    }
    for name, obj in bad.items():
        assert row_problem(obj) is not None, name
        assert isinstance(row_problem(obj), str), name
    assert "task_accs" in row_problem(bad["no task_accs"])
    assert row_problem(row()) is None
    assert row_problem(row(task_accs=[0, 1])) is None  # whole numbers are accuracies too
    # a plug-in method registered where the rows were made, not here, is still a row
    assert row_problem(row(method="my-plugin")) is None


def _without(key: str) -> dict:
    r = row()
    del r[key]
    return r


def test_read_rows_skips_damaged_lines_with_one_counted_warning(tmp_path, caplog):
    good = [row(ways=2), row(ways=3), row(ways=4)]
    path = write(tmp_path / "results.jsonl", [
        dumps(good[0]), b"[1, 2, 3]", b'"x"', b"{}", dumps(_without("task_accs")),
        dumps(row(task_accs="abc")), b"\xff\xfe not utf-8", dumps(good[1]), b"", b"   ",
        b"[" * 100_000, b"1" * 5000, dumps(good[2]), dumps(row(ways=5))[:40]])  # torn last line
    with caplog.at_level(logging.WARNING):
        got = read_rows(path)
    assert [r.to_json() for r in got] == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 9 line(s)" in warnings[0] and "line 2" in warnings[0]


def test_read_rows_keeps_the_first_of_repeated_rows_and_counts_the_rest(tmp_path, caplog):
    first, again = row(task_accs=[0.5, 1.0]), row(task_accs=[0.0, 0.0])  # same key, other numbers
    other = row(seed=313)
    path = write(tmp_path / "results.jsonl", [dumps(x) for x in (first, other, again, first)])
    with caplog.at_level(logging.WARNING):
        got = read_rows(path)
    assert [r.to_json() for r in got] == [first, other]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 2 row(s)" in warnings[0] and "3, 4" in warnings[0]


def test_read_rows_of_a_missing_file_is_empty_and_a_clean_file_is_silent(tmp_path, caplog):
    assert read_rows(tmp_path / "none.jsonl") == []
    path = write(tmp_path / "results.jsonl", [dumps(row(ways=2)), dumps(row(ways=3))])
    with caplog.at_level(logging.WARNING):
        assert len(read_rows(path)) == 2
    assert not caplog.records


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
# rows that are nearly right: one field replaced by any JSON value, or dropped
field = st.sampled_from(sorted(row()))
near_rows = st.one_of(
    st.builds(lambda k, v: row(**{k: v}), field, json_values),
    st.builds(lambda k: _without(k), field),
    st.builds(lambda w, s, accs: row(ways=w, seed=s, task_accs=accs, n_tasks=len(accs)),
              st.integers(2, 4), st.integers(0, 2),
              st.lists(st.floats(0, 1), min_size=1, max_size=3)))
lines = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    near_rows.map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=40),
    near_rows.map(lambda r: json.dumps(r).encode()[:20]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, max_size=12))
def test_fuzz_read_rows_never_raises_and_returns_only_valid_unique_rows(tmp_path, content):
    content = [x.replace(b"\n", b" ") for x in content]
    path = write(tmp_path / "results.jsonl", content)
    got = [r.to_json() for r in read_rows(path)]
    assert all(row_problem(r) is None for r in got)
    keys = [row_key(r) for r in got]
    assert len(keys) == len(set(keys))
    # and no valid row is lost: every valid line's key is there, held by its first occurrence
    first: dict[tuple, dict] = {}
    for x in content:
        try:
            obj = json.loads(x.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        if row_problem(obj) is None:
            first.setdefault(row_key(obj), obj)
    assert [json.dumps(r) for r in got] == [json.dumps(r) for r in first.values()]  # NaN-proof


def test_rows_record_their_environment(colour_folder, tmp_path):
    """A row names the software and machine it was measured on (mamf, its commit where the
    source is a git checkout, the libraries, Python, device, threads, date)."""
    import datetime
    import importlib.metadata
    import platform

    import torch

    import mamf
    from mamf.cli import main
    from mamf.results import ENVIRONMENT_FIELDS
    from mamf.system import denormals

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", str(out), "--ways", "3", "--quiet"]) == 0
    got = read_rows(out / "results.jsonl")[0].environment
    assert set(ENVIRONMENT_FIELDS) <= set(got)
    assert got["mamf"] == mamf.__version__ and got["torch"] == torch.__version__
    for package in ("transformers", "peft", "onnxruntime"):
        assert got[package] == importlib.metadata.version(package)
    assert got["python"] == platform.python_version()
    assert got["device"] == "cpu" and got["threads"] == torch.get_num_threads()
    assert got["denormals"] == denormals.mode()  # "flush" unless MAMF_DENORMALS=keep
    assert datetime.datetime.fromisoformat(got["date"]).tzinfo is not None
    commit = got["mamf_commit"]
    assert commit is None or len(commit.removesuffix("+dirty")) == 40
