"""The command line: train -> evaluate round trip, rows, configs, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import yaml

from mamf.cli import main
from mamf.config import build_config
from mamf.system.errors import MamfError
from mamf.tasks.task import number_of_tasks

ROW_FIELDS = {"method", "model", "dataset", "protocol", "ways", "shots", "queries", "seed",
              "split", "n_tasks", "acc_mean", "acc_ci95", "task_accs", "time_s"}


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_then_evaluate_round_trip(colour_folder, tmp_path, capsys, caplog):
    run, out = tmp_path / "run", tmp_path / "eval"
    assert main(["train", "--method", "mamf", "--model", "tiny-random-clip", "--data",
                 str(colour_folder), "--out", str(run), "--ways", "3", "--lr", "1e-3",
                 "--epochs", "2", "--sampler", "diverse", "--quiet"]) == 0
    assert (run / "model.safetensors").is_file()
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["method"] == "mamf" and resolved["data"]["ways"] == 3
    assert resolved["train"]["sampler"] == "diverse"
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out", str(out),
                 "--ways", "2,3", "--quiet", "--set", "metatest.epochs=1"]) == 0
    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", str(out), "--ways", "3", "--quiet"]) == 0
    got = rows(out / "results.jsonl")
    assert [(r["method"], r["ways"]) for r in got] == [("mamf", 2), ("mamf", 3),
                                                        ("zeroshot", 3)]
    assert [r["sampler"] for r in got] == ["diverse", "diverse", None]
    for r in got:
        assert set(r) >= ROW_FIELDS
        assert len(r["task_similarity"]) == r["n_tasks"]
        assert r["n_tasks"] == number_of_tasks(r["ways"], 6) == len(r["task_accs"])
        assert r["protocol"] == "paper" and r["split"] == "test" and r["seed"] == 312
        assert 0.0 <= r["acc_mean"] <= 1.0 and r["acc_ci95"] >= 0.0
    # the same seed gives the same numbers
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out",
                 str(tmp_path / "again"), "--ways", "2", "--quiet", "--set",
                 "metatest.epochs=1"]) == 0
    again = rows(tmp_path / "again" / "results.jsonl")[-1]
    assert again["task_accs"] == got[0]["task_accs"]
    assert "acc" in capsys.readouterr().out
    # evaluating again into the same folder measures nothing twice (issue: the report counted
    # repeated rows twice); the same cell with other settings is refused
    before = (out / "results.jsonl").read_text()
    with caplog.at_level(logging.INFO):
        assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out",
                     str(out), "--ways", "2,3", "--quiet", "--set", "metatest.epochs=1"]) == 0
    assert (out / "results.jsonl").read_text() == before
    assert "mamf 2-way seed 312 is already in" in caplog.text
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out", str(out),
                 "--ways", "2", "--quiet", "--set", "metatest.epochs=2"]) == 2
    assert "measured with other settings" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == before
    # the report reads what evaluate wrote
    assert main(["report", str(out)]) == 0
    assert "| colours |" in (out / "report.md").read_text()
    assert (out / "figures" / "curve-colours.png").is_file()


def test_episodic_evaluate_uses_the_requested_shape(shared_colour_folder, tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(shared_colour_folder),
                 "--out", str(out), "--protocol", "episodic", "--ways", "2", "--shots", "2",
                 "--queries", "3", "--tasks", "7", "--split", "dev", "--quiet"]) == 0
    (r,) = rows(out / "results.jsonl")
    assert (r["n_tasks"], r["shots"], r["queries"], r["split"]) == (7, 2, 3, "dev")


def test_yaml_config_and_overrides(tmp_path, colour_folder):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-random-clip\ntrain:\n  lr: 0.01\n  epochs: 1\n"
                   "metatest:\n  epochs: 0\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--method", "classical", "--data",
                 str(colour_folder), "--out", str(run), "--set", "train.batch_size=7",
                 "--quiet"]) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 0.01 and resolved["train"]["batch_size"] == 7
    assert resolved["train"]["method"] == "classical" and resolved["metatest"]["epochs"] == 0


@pytest.mark.parametrize("overrides, message", [
    ({"train.lrr": 1}, "unknown config key 'train.lrr'"),
    ({"train.lr": "fast"}, "train.lr must be a finite number"),
    ({"train.method": "sgd"}, "train.method must be one of"),
    ({"data.ways": 0}, "data.ways must be positive"),
    ({"train.augment": "maybe"}, "true or false"),
])
def test_bad_config_values_are_refused(overrides, message):
    with pytest.raises(MamfError, match=message):
        build_config(overrides=overrides)


def _cli(*args, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", MAMF_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "mamf", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.slow
def test_user_errors_are_one_line_without_traceback(tmp_path, colour_folder):
    cases = [
        (["evaluate", "--model", "tiny-random-clip", "--data", str(tmp_path / "nope"),
          "--out", str(tmp_path / "o")], "does not exist"),
        (["evaluate", "--model", "no-such-model", "--data", str(colour_folder), "--out",
          str(tmp_path / "o")], "unknown model 'no-such-model'"),
        (["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder), "--out",
          str(tmp_path / "o"), "--ways", "9"], "ways=9 is more than the 6 classes"),
    ]
    for args, message in cases:
        done = _cli(*args, tmp_path=tmp_path)
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("mamf: error")]
        assert len(errors) == 1 and message in errors[0], done.stderr
        assert "Traceback" not in done.stderr


def test_paper_protocol_names_a_label_with_too_few_images(tmp_path, capsys):
    from conftest import make_folder

    folder = make_folder(tmp_path / "few", n_classes=3, per_class=10)
    for f in sorted((folder / "green").iterdir())[:4]:
        f.unlink()
    code = main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(tmp_path / "o"), "--ways", "2", "--quiet"])
    assert code == 2
    assert "label 'green' has 6 image(s); the paper protocol needs at least" in \
        capsys.readouterr().err


def test_a_second_writer_to_the_same_folder_is_refused(colour_folder, tmp_path, capsys):
    from mamf.system.lock import exclusive

    out = tmp_path / "eval"
    with exclusive(out):
        code = main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                     "--out", str(out), "--ways", "2", "--quiet"])
    assert code == 2
    assert "another mamf process" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()
    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", str(out), "--ways", "2", "--quiet"]) == 0


@pytest.mark.parametrize("argv", [["train", "--sampler", "nosuch"], ["nosuch"], [],
                                  ["evaluate", "--ways"]])
def test_argument_refusals_are_one_line(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("mamf: error:") and err.count("\n") == 1, err


def test_failures_line_names_only_this_passes_failures(tmp_path):
    # a rerun that redid every earlier failure must not say "some runs failed"
    from mamf.cli import _failures_line
    from mamf.system.io import append_jsonl

    assert _failures_line(tmp_path, since="2026-01-01T00:00:00") == ""
    append_jsonl(tmp_path / "failures.jsonl", {"time": "2026-12-03T07:22:22", "method": "lp++"})
    assert _failures_line(tmp_path, since="2026-12-03T07:30:00") == ""
    append_jsonl(tmp_path / "failures.jsonl", {"time": "2026-12-03T07:31:05", "method": "lp++"})
    assert _failures_line(tmp_path, since="2026-12-03T07:30:00").startswith(
        "1 run(s) failed in this pass")
    # a report (no pass) says what the file holds
    assert "holds 2 failure record(s), the latest at 2026-12-03T07:31:05" in \
        _failures_line(tmp_path, since=None)


def test_no_option_of_mamf_is_one_torchrun_takes_for_its_own():
    """torchrun's parser checks every argument, the script's included, against its own options
    and their abbreviations: a mamf option that begins one of them never reaches mamf under
    torchrun. `evaluate --run` (an abbreviation of --run-path) is kept for plain `mamf evaluate`;
    its torchrun-safe spelling is --run-dir."""
    import argparse

    from torch.distributed.run import get_args_parser

    from mamf.cli import parser

    theirs = [o for a in get_args_parser()._actions for o in a.option_strings]
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    taken = [(name, o) for name, p in sub.choices.items() for a in p._actions
             for o in a.option_strings if o not in ("-h", "--help")
             and any(t.startswith(o) for t in theirs)]
    assert taken == [("evaluate", "--run")]
    ev = sub.choices["evaluate"]
    assert ev.parse_args(["--run-dir", "r", "--out", "o"]).run == "r"
    assert ev.parse_args(["--run", "r", "--out", "o"]).run == "r"
