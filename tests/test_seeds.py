"""Seeds reach numpy (`default_rng`: n >= 0) and torch (`manual_seed`: n < 2**64): anything
outside [0, 2**63-1] is one clear line, and the top of that range works end to end."""

from __future__ import annotations

import pytest

from mamf.cli import main
from mamf.config import build_config
from mamf.runs.experiment import parse_experiment
from mamf.system.errors import MamfError


def evaluate(folder, out, *extra):
    return main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(out), "--ways", "2", "--quiet", *extra])


@pytest.mark.parametrize("key", ["seed", "data.split_seed"])
@pytest.mark.parametrize("value", [-1, 2**63, 2**64, -(2**70)])
def test_a_seed_out_of_range_is_refused(key, value):
    with pytest.raises(MamfError, match=r"must be an integer in \[0, 2\*\*63-1\]"):
        build_config(overrides={key: value})


def test_a_huge_seed_is_not_printed_in_full():
    with pytest.raises(MamfError, match="an integer of 301 digits") as e:
        build_config(overrides={"seed": 10**300})
    assert len(str(e.value)) < 200


@pytest.mark.parametrize("seeds", [[1, -3], [2**63], [0, 1, 2, 2**64]])
def test_experiment_seeds_out_of_range_are_refused(colour_folder, seeds):
    raw = {"model": "tiny-random-clip", "methods": ["zeroshot"], "seeds": seeds,
           "datasets": {"c": {"root": str(colour_folder), "ways": [2]}}}
    with pytest.raises(MamfError, match=r"experiment 'seeds' must be an integer in \[0, 2\*\*63"):
        parse_experiment(raw)


@pytest.mark.parametrize("flags", [["--seed", "-1"], ["--seed", str(2**64)],
                                   ["--set", "data.split_seed=-5"]])
def test_a_bad_seed_on_the_command_line_is_one_line(colour_folder, tmp_path, capsys, flags):
    assert evaluate(colour_folder, tmp_path / "o", *flags) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("mamf: error")] == [
        next(line for line in err.splitlines() if "must be an integer in [0, 2**63-1]" in line)]


def test_the_largest_seed_runs(colour_folder, tmp_path):
    top = str(2**63 - 1)
    assert evaluate(colour_folder, tmp_path / "o", "--seed", top, "--protocol", "episodic",
                    "--tasks", "5", "--queries", "4", "--set", f"data.split_seed={top}",
                    "--set", "data.class_split=0.34,0.33,0.33") == 0
