"""Numbers unchanged: a tiny grid of every protocol gives the rows it gave before the protocols
became plug-ins (`tests/data/protocol_rows.json`, made by `tests/protocol_grid.py`).

The fixture was measured on one CPU. Another CPU may round a float reduction differently (an AMD
EPYC and an Intel Xeon differ in the 7th digit of a training loss), so across machines the test
holds what no CPU may change exactly (every count, name, choice and per-task accuracy) and every
other float within `REL_TOL`. Bit-exactness is promised per machine and thread count, and is
tested as that: the same grid twice on this machine gives the same rows to the last bit."""

from __future__ import annotations

import json
import math

import torch
from conftest import make_folder
from protocol_grid import FIXTURE, PROTOCOLS, grid_rows

# a float rounded differently by another CPU's kernels; far below any accuracy step (1/queries)
REL_TOL = 1e-4
ABS_TOL = 1e-6
# fields that are fractions of whole queries: a different value is a different prediction
EXACT_FLOAT_FIELDS = {"task_accs"}


def same(now, before, field: str = "") -> bool:
    """Equal, except that a float outside EXACT_FLOAT_FIELDS may move within the tolerance."""
    if isinstance(before, dict):
        return (isinstance(now, dict) and now.keys() == before.keys()
                and all(same(now[k], before[k], k if field not in EXACT_FLOAT_FIELDS else field)
                        for k in before))
    if isinstance(before, list):
        return (isinstance(now, list) and len(now) == len(before)
                and all(same(a, b, field) for a, b in zip(now, before)))
    if isinstance(before, float) and isinstance(now, (int, float)) and not isinstance(now, bool):
        if field in EXACT_FLOAT_FIELDS:
            return now == before
        return math.isclose(now, before, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return type(now) is type(before) and now == before


def one_thread_rows(tmp_path, protocols=None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture was measured at one thread
    try:
        folder = make_folder(tmp_path / "colours", n_classes=8, per_class=12)
        return grid_rows(folder, tmp_path / "runs", protocols=protocols)
    finally:
        torch.set_num_threads(threads)


def test_every_protocol_gives_the_rows_it_gave_before(tmp_path):
    rows = one_thread_rows(tmp_path)
    before = json.loads(FIXTURE.read_text())
    # fields rows gained since the fixture was made (train_images, train_budget) are additions:
    # every field it has must be unchanged
    now = [{k: v for k, v in row.items() if k in old} for row, old in
           zip(json.loads(json.dumps(rows, sort_keys=True)), before)]
    assert len(rows) == len(before)
    differing = [(i, k) for i, (a, b) in enumerate(zip(now, before)) for k in b
                 if not same(a.get(k), b[k], k)]
    assert not differing, f"rows differ from the fixture at (row, field): {differing}"


def test_the_tolerance_lets_a_rounding_through_and_nothing_else():
    row = {"task_accs": [0.5, 1.0], "train_loss": 1.2345678, "n_tasks": 2, "method": "mamf"}
    assert same({**row, "train_loss": 1.2345679}, row)                   # 7th digit: rounding
    assert not same({**row, "train_loss": 1.25}, row)                    # a different training
    assert not same({**row, "task_accs": [0.5, 0.9999999]}, row)         # a changed prediction
    assert not same({**row, "n_tasks": 3}, row)
    assert not same({**row, "method": "classical"}, row)
    assert not same({k: v for k, v in row.items() if k != "n_tasks"}, row)


def test_the_same_grid_twice_on_one_machine_is_bit_identical(tmp_path):
    protocols = ["paper", "coop"]
    assert set(protocols) <= set(PROTOCOLS)
    first = one_thread_rows(tmp_path / "a", protocols)
    second = one_thread_rows(tmp_path / "b", protocols)
    assert first and json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
