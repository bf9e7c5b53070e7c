"""One row type, one key: a row read and written back is unchanged, and every grouping of rows
(what evaluate skips, an experiment's grid, the report's cells) is that one key with fields
blank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mamf.report.compare import cell_of
from mamf.report.selection import unmixed
from mamf.results import (
    GRID_LEAVES_OUT,
    KEY_FIELDS,
    Row,
    RowKey,
    grid_key,
    measured_key,
    read_rows,
    row_key,
)
from mamf.runs.experiment import planned_grid_key
from mamf.runs.experiment_file import DatasetSpec
from mamf.system.errors import MamfError

STUDIES = sorted((Path(__file__).parents[1] / "docs" / "results").glob("*/results.jsonl"))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def full_row(**over) -> dict:
    """A row in which every field of the key has a value (none left blank)."""
    r = {"method": "mamf", "model": "tiny-random-clip", "dataset": "colours", "protocol": "paper",
         "ways": 3, "shots": 2, "queries": 2, "seed": 312, "split": "test",
         "sampler": "similar", "alpha": 0.5, "n_tasks": 2, "acc_mean": 0.75, "acc_ci95": 0.49,
         "task_accs": [0.5, 1.0], "time_s": 0.1, "run": "runs/a", "experiment": "e",
         "experiment_dataset": "colours-6"}
    r.update(over)
    return r


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.parent.name)
def test_every_committed_row_is_written_back_as_it_was(path):
    """Same fields, same values, same order, for each layout the studies' rows have had."""
    assert STUDIES
    for obj in lines(path):
        row = Row.from_json(obj)
        written = row.to_json()
        assert json.dumps(written) == json.dumps(obj)
        assert Row.from_json(written) == row
    rows = read_rows(path)  # every reader gets Rows, each written back as it was read
    assert rows and all(isinstance(r, Row) for r in rows)
    assert [json.dumps(r.to_json()) for r in rows] == [json.dumps(o) for o in lines(path)]
    assert [row_key(r) for r in rows] == [row_key(o) for o in lines(path)]


def test_a_row_from_before_samplers_and_wiseft_reads_as_what_it_measured():
    old = {"method": "mamf", "model": "m", "dataset": "counting", "protocol": "paper", "ways": 2,
           "shots": 6, "queries": 6, "seed": 312, "split": "test", "n_tasks": 1,
           "acc_mean": 0.5, "acc_ci95": 0.0, "task_accs": [0.5], "time_s": 1.0,
           "host": "vm", "torch": "2.0", "a_field_from_later": {"kept": True}}
    row = Row.from_json(old)
    assert (row.sampler, row.alpha, row.run) == ("uniform", None, None)  # drawn uniformly, unmixed
    assert Row.from_json({**old, "method": "zeroshot"}).sampler is None  # draws no tasks
    assert row.extra["a_field_from_later"] == {"kept": True} and row.environment == {"torch": "2.0"}
    assert list(row.to_json()) == list(old) and row.to_json() == old  # nothing added, nothing lost
    assert row.key == row_key({**old, "sampler": "uniform", "alpha": None})
    assert Row.from_json({**old, "alpha": 1}).key.alpha == 1.0 and \
        Row.from_json({**old, "alpha": 1}).to_json()["alpha"] == 1  # written as it was read


def test_update_adds_new_fields_last_and_changes_others_in_place():
    row = Row.from_json(full_row(run=None))
    order = list(row.to_json())
    row.update({"run": "runs/b", "train_steps": 7, "tuned_on_dev": {"lr": 0.1}})
    assert row.run == "runs/b" and row.train_steps == 7
    assert list(row.to_json()) == [*order, "train_steps", "tuned_on_dev"]


def test_a_row_without_its_identity_is_refused_in_one_line():
    with pytest.raises(MamfError, match="not a results row: no model, seed"):
        Row.from_json({k: v for k, v in full_row().items() if k not in ("model", "seed")})


def test_the_key_is_the_rows_fields_named_by_the_key():
    key = row_key(full_row())
    assert key._fields == KEY_FIELDS
    assert key == RowKey(dataset="colours-6", method="mamf", model="tiny-random-clip",
                         run="runs/a", protocol="paper", ways=3, shots=2, queries=2, seed=312,
                         split="test", sampler="similar", alpha=0.5)
    for field in KEY_FIELDS:  # every field of the key tells two measurements apart
        other = {"dataset": "x", "experiment_dataset": "x"} if field == "dataset" else \
            {field: 0.25 if field == "alpha" else 99 if isinstance(full_row()[field], int)
             else "other"}
        assert row_key(full_row(**other)) != key, field
    with pytest.raises(ValueError, match="not fields of a row's key: colour"):
        key.without("colour")


def test_an_experiment_skips_exactly_the_rows_its_grid_wrote():
    """What the grid plans (`planned_grid_key`) names every field of the key but GRID_LEAVES_OUT, so a
    field added to the key and to rows is either planned or declared left out: otherwise a
    finished grid would compute its rows again (or skip rows it never wrote)."""
    row = full_row()
    for by_shots in (True, False):
        planned = planned_grid_key(DatasetSpec(name="colours-6"), "mamf", "similar", 312,
                            2 if by_shots else None, 3, "test", 0.5)
        assert grid_key(row, by_shots) == planned
        named = {f for f, v in planned._asdict().items() if v is not None}
        assert named | set(GRID_LEAVES_OUT) | ({"shots"} if not by_shots else set()) == \
            set(KEY_FIELDS)
        assert grid_key(full_row(sampler="uniform"), by_shots) != planned
    assert grid_key(full_row(model="other", run=None, queries=5), True) == grid_key(row, True)


def test_evaluate_and_the_report_group_by_the_same_key():
    row = full_row()
    assert measured_key(row) == row_key(row)._replace(queries=None)  # evaluate: one measurement, once
    # the report's cell: the test tasks, whatever method, sampler, model or run met them
    cell = cell_of(Row.from_json(row))
    assert {f for f, v in cell._asdict().items() if v is not None} == \
        {"dataset", "ways", "shots", "seed", "split"}
    other = full_row(method="fomaml", sampler=None, run=None, alpha=None)
    assert cell_of(Row.from_json(other)) == cell
    assert cell_of(Row.from_json(full_row(seed=313))) != cell
    # the main tables: an alpha-1 row stands in for its unmixed twin only where there is none
    plain, mixed, uniform = (Row.from_json(full_row(alpha=a, **s)) for a, s in
                             ((None, {}), (1.0, {}), (None, {"sampler": "uniform"})))
    assert unmixed([plain, mixed]) == [plain]
    assert unmixed([mixed, uniform]) == [mixed, uniform]
