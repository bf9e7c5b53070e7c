"""The batched meta-test (`metatest.batched`, `mamf.methods.batched`): many test tasks fine-tuned at once
with torch.func, each getting the updates the one-task-at-a-time meta-test gives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamf import methods
from mamf.config import build_config
from mamf.engine.metatest import WeightSnapshot, evaluation_tasks, meta_test
from mamf.methods import batched
from mamf.runs.prepare import prepare

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True, "data.ways": 3, "metatest.lr": 1e-2,
          "metatest.epochs": 3, "metatest.batch_size": 4, "metatest.inner_lr": 0.5,
          "metatest.inner_epochs": 2, "metatest.inner_batch_size": 4}


def setup(folder, **over):
    config = build_config(overrides={**FROZEN, "data.root": str(folder), **over})
    model, dataset, inputs = prepare(config)
    return config, model, inputs, evaluation_tasks(dataset, config, "test", 3)


@pytest.mark.parametrize("method", ["classical", "fomaml"])  # Adam and SGD
def test_each_task_gets_the_updates_of_one_task_at_a_time(shared_colour_folder, method):
    config, model, inputs, tasks = setup(shared_colour_folder)
    plugin = methods.create(method, config)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    snapshot = WeightSnapshot(model)
    alone = []
    for i, task in enumerate(tasks):
        snapshot.restore()
        plugin.adapt(model, inputs, task, np.random.default_rng([config.seed, 103, 3, i]))
        alone.append({n: p.detach().clone() for n, p in named})
    snapshot.restore()
    before = {n: p.detach().clone() for n, p in named}
    rngs = {i: np.random.default_rng([config.seed, 103, 3, i]) for i in range(len(tasks))}
    together = batched.adapted(model, inputs, dict(enumerate(tasks)), rngs, plugin.fine_tuning())
    assert sorted(together) == list(range(len(tasks)))
    moved = 0.0
    for i, params in together.items():
        for n, _ in named:
            torch.testing.assert_close(params[n], alone[i][n], rtol=1e-4, atol=1e-5)
            moved = max(moved, float((params[n] - before[n]).abs().max()))
    assert moved > 1e-3  # the tasks did adapt, far beyond the tolerance
    assert all(torch.equal(p, before[n]) for n, p in named)  # the model itself is untouched


def test_the_batched_meta_test_scores_as_the_one_at_a_time(shared_colour_folder, monkeypatch):
    monkeypatch.setattr(batched, "FEWEST", 1)
    calls = []
    adapted = batched._chunks
    monkeypatch.setattr(batched, "_chunks", lambda *a: calls.append(1) or adapted(*a))
    rows = {}
    for on in (False, True):
        config, model, inputs, tasks = setup(shared_colour_folder, **{"metatest.batched": on})
        predictions: list = []
        rows[on] = (meta_test(model, inputs, tasks, "classical", config, 3, progress=False,
                              predictions=predictions), predictions)
    assert rows[True] == rows[False]
    assert calls  # the batched path did score them


def test_a_shape_too_few_tasks_share_is_left_to_the_one_at_a_time_loop(shared_colour_folder,
                                                                       monkeypatch):
    config, model, inputs, tasks = setup(shared_colour_folder, **{"metatest.batched": True})
    monkeypatch.setattr(batched, "FEWEST", len(tasks) + 1)
    fine_tuning = methods.create("classical", config).fine_tuning()
    rngs = {i: np.random.default_rng(i) for i in range(len(tasks))}
    assert batched.scorers(model, inputs, dict(enumerate(tasks)), rngs, fine_tuning) == {}
    accs = meta_test(model, inputs, tasks, "classical", config, 3, progress=False)
    monkeypatch.setattr(batched, "FEWEST", 1)
    assert meta_test(model, inputs, tasks, "classical", config, 3, progress=False) == accs


def test_without_cached_towers_the_meta_test_goes_one_task_at_a_time(shared_colour_folder,
                                                                      monkeypatch):
    config, model, inputs, tasks = setup(shared_colour_folder, **{
        "metatest.batched": True, "train.freeze_image_backbone": False})
    monkeypatch.setattr(batched, "adapted", lambda *a: pytest.fail("batched a trained tower"))
    assert len(meta_test(model, inputs, tasks[:2], "classical", config, 3, progress=False)) == 2
    assert not batched.applies(inputs, methods.create("classical", config).fine_tuning(),
                               augment=False, reset=True)
    assert methods.create("tip-adapter", config).fine_tuning() is None  # adapts otherwise
