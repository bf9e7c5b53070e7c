"""Numbers unchanged: a tiny grid of every protocol gives exactly the rows it gave before the
protocols became plug-ins (`tests/data/protocol_rows.json`, made by `tests/protocol_grid.py`)."""

from __future__ import annotations

import json

import torch
from conftest import make_folder
from protocol_grid import FIXTURE, grid_rows


def test_every_protocol_gives_the_rows_it_gave_before(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fixture was measured at one thread
    try:
        rows = grid_rows(make_folder(tmp_path / "colours", n_classes=8, per_class=12), tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert json.loads(json.dumps(rows, sort_keys=True)) == json.loads(FIXTURE.read_text())
