"""Each method on tiny-random-clip and distinct colour classes: the loss falls and held-out tasks
score above chance; the meta-test restores the weights between tasks; FOMAML is exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mamf.config import build_config
from mamf.engine.metatest import WeightSnapshot, evaluation_tasks, meta_test
from mamf.engine.training import train
from mamf.methods import fomaml
from mamf.methods.classical import Classical
from mamf.methods.finetune import Batch, batch_loss, epoch_batches
from mamf.protocols.paper import paper_pool
from mamf.runs.prepare import prepare
from mamf.stats import mean_ci95
from mamf.tasks.task import halved_task

FAST = {"train.lr": 3e-3, "train.batch_size": 16, "train.epochs": 15, "train.augment": False,
        "train.inner_lr": 0.01, "train.inner_epochs": 1, "metatest.inner_lr": 0.01,
        "metatest.lr": 1e-3,
        "metatest.epochs": 2, "model": "tiny-random-clip", "data.ways": 5}


def setup(folder, **over):
    config = build_config(overrides={**FAST, "data.root": str(folder), **over})
    model, dataset, inputs = prepare(config)
    return config, model, dataset, inputs


def held_out(config, model, dataset, inputs, method):
    tasks = evaluation_tasks(dataset, config, "test", 5)
    return mean_ci95(meta_test(model, inputs, tasks, method, config, 5, progress=False))


@pytest.mark.parametrize("method", ["classical", "mamf", "fomaml"])
def test_trained_methods_lower_the_loss_and_beat_chance(shared_colour_folder, method):
    extra = {"train.epochs": 40} if method == "fomaml" else {}
    config, model, dataset, inputs = setup(shared_colour_folder, **{"train.method": method},
                                           **extra)
    before = held_out(config, model, dataset, inputs, "zeroshot")[0]
    result = train(model, inputs, dataset, config, progress=False)
    k = max(1, len(result.losses) // 5)
    assert np.mean(result.losses[-k:]) < 0.7 * np.mean(result.losses[:k])
    mean, ci = held_out(config, model, dataset, inputs, method)
    assert mean - ci > 0.2, (method, mean, ci)  # chance is 1/5
    assert mean > before


def test_zeroshot_scores_a_trained_model_above_chance_and_changes_nothing(shared_colour_folder):
    config, model, dataset, inputs = setup(shared_colour_folder, **{"train.method": "classical"})
    train(model, inputs, dataset, config, progress=False)
    weights = [p.detach().clone() for p in model.parameters()]
    tasks = evaluation_tasks(dataset, config, "test", 5)
    accs = meta_test(model, inputs, tasks, "zeroshot", config, 5, progress=False)
    mean, ci = mean_ci95(accs)
    assert mean - ci > 0.2
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    random_model = setup(shared_colour_folder)
    untrained = held_out(*random_model[:3], random_model[3], "zeroshot")[0]
    assert untrained < mean


def test_meta_test_restores_weights_between_tasks(shared_colour_folder):
    config, model, dataset, inputs = setup(shared_colour_folder, **{"metatest.lr": 5e-3,
                                                                    "metatest.epochs": 3})
    tasks = evaluation_tasks(dataset, config, "test", 5)[:4]
    start = [p.detach().clone() for p in model.parameters()]
    seen = []
    original_adapt = Classical.adapt

    def spy(self, model_, *args, **kwargs):
        seen.append(all(torch.equal(a, b) for a, b in zip(start, model_.parameters())))
        return original_adapt(self, model_, *args, **kwargs)

    Classical.adapt = spy
    try:
        meta_test(model, inputs, tasks, "classical", config, 5, progress=False)
        assert seen == [True] * 4  # every task starts from the trained weights
        seen.clear()
        config.metatest.reset = False  # the official behaviour: adaptation carries over
        meta_test(model, inputs, tasks, "classical", config, 5, progress=False)
        assert seen == [True, False, False, False]
    finally:
        Classical.adapt = original_adapt
    assert all(torch.equal(a, b) for a, b in zip(start, model.parameters()))


def test_weight_snapshot_round_trip(shared_colour_folder):
    _, model, _, _ = setup(shared_colour_folder)
    snap = WeightSnapshot(model)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    snap.restore()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fomaml_applies_the_query_gradient_taken_at_the_adapted_weights(shared_colour_folder):
    _, model, dataset, inputs = setup(shared_colour_folder, **{"train.method": "fomaml"})
    pool = paper_pool(dataset, "train")
    task = halved_task(np.random.default_rng(0), pool, 3)
    lr_in, batch = 0.1, 4
    # by hand: copy, SGD on support minibatches, gradient of the query loss at the adapted copy
    manual = copy.deepcopy(model)
    rng = np.random.default_rng(9)
    for b in epoch_batches(rng, task.support, task.support_labels, task.classes, batch, 1):
        manual.zero_grad()
        batch_loss(manual, inputs, b).backward()
        with torch.no_grad():
            for p in manual.parameters():
                if p.grad is not None:
                    p -= lr_in * p.grad
    manual.zero_grad()
    batch_loss(manual, inputs, Batch(task.query, task.query_labels, task.classes)).backward()
    expected = [p.grad for p in manual.parameters()]
    start = [p.detach().clone() for p in model.parameters()]
    outer = torch.optim.SGD(model.parameters(), lr=1.0)
    learner = fomaml.clone_learner(model)
    fomaml.outer_step(model, learner, inputs, [task], outer, lr_in, 1, batch,
                      [np.random.default_rng(9)])
    for p0, p1, g in zip(start, model.parameters(), expected):
        step = p0 - p1.detach()
        if g is None:
            assert torch.equal(step, torch.zeros_like(step))
        else:
            assert torch.allclose(step, g, atol=1e-5, rtol=1e-4)
    assert any(g is not None and g.abs().sum() > 0 for g in expected)
