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
    before = json.loads(FIXTURE.read_text())
    # fields rows gained since the fixture was made (train_images, train_budget) are additions:
    # every field it has must be unchanged
    now = [{k: v for k, v in row.items() if k in old} for row, old in
           zip(json.loads(json.dumps(rows, sort_keys=True)), before)]
    assert len(rows) == len(before) and now == before
