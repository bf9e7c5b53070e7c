"""The test-time baselines (linear probe, prototype, Tip-Adapter, Tip-Adapter-F): each on a
hand-made example whose answer is known, on the shared meta-test, and through `mamf evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamf import protocols
from mamf.cli import main
from mamf.config import build_config
from mamf.engine.metatest import evaluation_tasks, meta_test, tuned_method
from mamf.methods.embedded import Embedded
from mamf.methods.prototype import prototypes
from mamf.methods.tip_adapter import fine_tune_keys, tip_logits
from mamf.methods.zs_probe import fit_probe
from mamf.runs.measure import evaluate_prepared
from mamf.runs.prepare import prepare

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True, "data.ways": 4}


def unit(*rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def hand_task(support, support_labels, query, query_labels, texts, scale=10.0) -> Embedded:
    return Embedded(unit(*support), torch.tensor(support_labels), unit(*query),
                    torch.tensor(query_labels), unit(*texts), scale)


def setup(folder, **over):
    config = build_config(overrides={**FROZEN, "data.root": str(folder), **over})
    model, dataset, inputs = prepare(config)
    return config, model, dataset, inputs


def test_prototype_picks_the_nearest_class_mean():
    # the prompts point the wrong way; the support means point the right way
    task = hand_task(support=[[1, 0.2], [1, -0.2], [0.2, 1], [-0.2, 1]], support_labels=[0, 0, 1, 1],
                     query=[[0.9, 0.3], [0.3, 0.9]], query_labels=[0, 1], texts=[[0, 1], [1, 0]])
    means = prototypes(task, mix=1.0)
    assert torch.allclose(means, unit([1, 0], [0, 1]), atol=1e-6)
    assert (task.query @ means.T).argmax(1).tolist() == [0, 1]
    # mix 0 is the prompt embedding itself (zero-shot), which gets both queries wrong here
    assert torch.allclose(prototypes(task, mix=0.0), task.texts)
    assert (task.query @ prototypes(task, 0.0).T).argmax(1).tolist() == [1, 0]


def test_zs_probe_starts_at_zero_shot_and_fits_the_support_set():
    task = hand_task(support=[[1, 0.2], [1, -0.2], [0.2, 1], [-0.2, 1]], support_labels=[0, 0, 1, 1],
                     query=[[0.9, 0.3]], query_labels=[0], texts=[[0, 1], [1, 0]])
    weight, bias = fit_probe(task, steps=0, lr=0.1, weight_decay=0.0)
    assert torch.equal(task.scale * task.support @ weight.T + bias,
                       task.zero_shot_logits(task.support))
    weight, bias = fit_probe(task, steps=200, lr=0.05, weight_decay=0.0)
    assert ((task.scale * task.support @ weight.T + bias).argmax(1) == task.support_labels).all()


def test_tip_adapter_is_zero_shot_at_alpha_zero_and_follows_the_cache_beyond():
    task = hand_task(support=[[1, 0], [0, 1]], support_labels=[0, 1], query=[[0.95, 0.05]],
                     query_labels=[0], texts=[[0.6, 0.8], [0.8, 0.6]], scale=1.0)
    assert torch.equal(tip_logits(task, task.query, task.support, 0.0, 5.0),
                       task.zero_shot_logits(task.query))
    assert tip_logits(task, task.query, task.support, 0.0, 5.0).argmax(1).tolist() == [1]
    assert tip_logits(task, task.query, task.support, 3.0, 5.0).argmax(1).tolist() == [0]


def test_tip_adapter_f_keys_lower_the_support_loss():
    task = hand_task(support=[[1, 0.1], [0.9, 0.5], [0.1, 1], [0.5, 0.9]],
                     support_labels=[0, 1, 1, 0], query=[[1, 0]], query_labels=[0],
                     texts=[[0, 1], [1, 0]], scale=1.0)

    def loss(keys):
        return float(F.cross_entropy(tip_logits(task, task.support, keys, 1.0, 1.0),
                                     task.support_labels))

    rng = np.random.default_rng(0)
    tuned = fine_tune_keys(task, epochs=50, lr=0.05, alpha=1.0, beta=1.0, rng=rng)
    assert not torch.equal(tuned, task.support)
    assert loss(tuned) < loss(task.support)
    assert torch.equal(fine_tune_keys(task, 0, 0.05, 1.0, 1.0, rng), task.support)


@pytest.mark.parametrize("method, settings", [
    ("zs-probe", {"baseline.probe_steps": 0}),
    ("tip-adapter", {"baseline.tip_alphas": [0.0]}),
    ("tip-adapter-f", {"baseline.tip_alphas": [0.0]}),
    ("prototype", {"baseline.prototype_mix": 0.0}),
])
def test_each_baseline_reduces_to_zero_shot_on_the_meta_test(shared_colour_folder, method,
                                                             settings):
    config, model, dataset, inputs = setup(shared_colour_folder, **settings)
    tasks = evaluation_tasks(dataset, config, "test", 4)
    zero = meta_test(model, inputs, tasks, "zeroshot", config, 4, progress=False)
    adapter, _ = tuned_method(model, inputs, dataset, method, config, 4)
    assert meta_test(model, inputs, tasks, adapter, config, 4, progress=False) == zero


def test_baselines_beat_zero_shot_on_the_random_model(shared_colour_folder):
    """tiny-random-clip's prompts say nothing; the support set's embeddings do."""
    config, model, dataset, inputs = setup(shared_colour_folder)
    zero = evaluate_prepared(model, dataset, inputs, config, "zeroshot", 4, progress=False).to_json()
    for method in ("prototype", "zs-probe", "linear-probe-clip", "tip-adapter", "tip-adapter-f"):
        row = evaluate_prepared(model, dataset, inputs, config, method, 4, progress=False).to_json()
        assert row["acc_mean"] > zero["acc_mean"] + 0.1, (method, row["acc_mean"])


def test_tip_adapter_chooses_alpha_and_beta_on_dev_tasks_only(shared_colour_folder):
    config, model, dataset, inputs = setup(shared_colour_folder)
    test_pool = protocols.get(config.data.protocol).pool(dataset, config.data, "test", config.seed)
    test_images = set(np.concatenate(test_pool.images).tolist())
    seen: list[int] = []
    real = inputs.images

    def spy(model_, indices, *args, **kwargs):
        seen.extend(np.asarray(indices).tolist())
        return real(model_, indices, *args, **kwargs)

    inputs.images = spy
    adapter, chosen = tuned_method(model, inputs, dataset, "tip-adapter", config, 4)
    inputs.images = real
    assert seen and not test_images & set(seen)
    dev_images = set(np.concatenate(protocols.get(config.data.protocol).pool(dataset, config.data, "dev",
                                                      config.seed).images).tolist())
    assert set(seen) <= dev_images
    assert chosen["alpha"] in adapter.alphas and chosen["beta"] in adapter.betas
    assert (adapter.alpha, adapter.beta) == (chosen["alpha"], chosen["beta"])
    assert chosen["dev_tasks"] == len(evaluation_tasks(dataset, config, "dev", 4))
    row = evaluate_prepared(model, dataset, inputs, config, "tip-adapter", 4, progress=False).to_json()
    assert row["chosen_on_dev"] == chosen


def test_evaluate_method_with_model_and_with_run(shared_colour_folder, tmp_path, capsys):
    data, out, run = str(shared_colour_folder), tmp_path / "eval", tmp_path / "run"
    frozen = ["--set", "train.freeze_image_backbone=true", "--set",
              "train.freeze_text_tower=true", "--quiet"]
    assert main(["evaluate", "--model", "tiny-random-clip", "--method", "tip-adapter", "--data",
                 data, "--out", str(out), "--ways", "3", *frozen]) == 0
    assert main(["train", "--method", "mamf", "--model", "tiny-random-clip", "--data", data,
                 "--out", str(run), "--ways", "3", "--steps", "3", *frozen]) == 0
    assert main(["evaluate", "--run", str(run), "--method", "tip-adapter", "--data", data,
                 "--out", str(out), "--ways", "3", "--quiet"]) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in rows] == ["tip-adapter", "mamf+tip-adapter"]
    assert rows[0]["run"] is None and rows[1]["run"] == str(run)
    assert rows[1]["trained_by"] == "mamf" and rows[1]["test_method"] == "tip-adapter"
    assert rows[1]["sampler"] == "uniform" and rows[0]["sampler"] is None
    assert all("alpha" in r["chosen_on_dev"] for r in rows)
    # a method that trains has no meaning on untrained weights
    assert main(["evaluate", "--model", "tiny-random-clip", "--method", "mamf", "--data", data,
                 "--out", str(out), *frozen]) == 2
    assert "--method mamf trains" in capsys.readouterr().err
