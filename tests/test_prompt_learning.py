"""CoOp and CoCoOp (a learned prompt context), the text towers over input embeddings, the cosine
learning-rate schedule and the clip-lora preset, against values worked out by hand."""

from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch

from mamf import methods
from mamf.api import make_config
from mamf.cli import main
from mamf.config import build_config
from mamf.engine.training import cosine_lr, train, with_steps
from mamf.methods.base import EXTENSION
from mamf.methods.coop import Prompts, class_contexts, class_embeddings
from mamf.models.registry import load_model
from mamf.runs.prepare import prepare
from mamf.system.errors import MamfError


def _config(folder, method="coop", **settings):
    return build_config({"model": "tiny-random-clip", "seed": 3,
                         "data": {"root": str(folder), "protocol": "coop", "shots": 2},
                         "train": {"method": method, "steps": 1, "batch_size": 6,
                                   "augment": False, "checkpoint_every": 0}}, settings)


@pytest.mark.parametrize("name", ["tiny-random-clip", "tiny-random-siglip"])
def test_the_text_tower_over_its_own_input_embeddings_is_the_text_tower(name):
    model = load_model(name)
    tokens = model.tokenize(["a photo of a red.", "blue."])
    with torch.no_grad():
        direct = model.encode_texts(tokens)
        through = model.encode_text_embeddings(model.text_input_embeddings(tokens), tokens)
    assert torch.equal(direct, through)


def test_the_context_takes_the_init_words_places():
    """The byte tokenizer: [BOS] then one token per byte, so "a photo of a" is 12 tokens at
    positions 1..12, and "X X X" (three placeholders) is 5 (the spaces are bytes too)."""
    model = load_model("tiny-random-clip")
    prompts = Prompts(model, ["red", "dark blue"], "a photo of a")
    assert (prompts.start, prompts.stop) == (1, 13)
    assert Prompts(model, ["red"], "X X X").length == 5


def test_the_initial_context_reproduces_the_hand_written_prompt(colour_folder):
    """Initialised from "a photo of a", CoOp's class embedding is the text tower's embedding of
    "a photo of a <name>." exactly: CoOp starts at zero-shot with that prompt."""
    model, dataset, inputs = prepare(_config(colour_folder))
    method = methods.create("coop", _config(colour_folder))
    method.add_to_model(model, inputs)
    prompts = method.make_prompts(model, inputs)
    ids = np.arange(len(dataset.classes))
    context = getattr(model, EXTENSION)
    with torch.no_grad():
        learned = class_embeddings(model, prompts, ids, class_contexts(context.vectors, ids))
        plain = model.encode_texts(model.tokenize([f"a photo of a {c}." for c in
                                                   dataset.classes]))
    assert torch.allclose(learned, plain, atol=1e-6)


@pytest.mark.parametrize("specific", [False, True])
def test_coop_changes_only_its_context(colour_folder, specific):
    """One step: every tower weight, head and the temperature unchanged; the context moved by
    SGD's first step, -lr * (gradient + 5e-4 * context) (momentum has no history yet), the
    gradient taken by hand through the text tower over input embeddings."""
    config = _config(colour_folder, **{"baseline.coop_class_specific": specific,
                                       "baseline.coop_lr": 0.1})
    model, dataset, inputs = prepare(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = methods.create("coop", config)
    method.add_to_model(model, inputs)
    context = getattr(model, EXTENSION)
    start = context.vectors.detach().clone()
    assert start.shape[0] == (len(dataset.classes) if specific else 12)
    # the first batch as the run draws it, and the loss's gradient worked out apart
    from mamf.engine.training import train_pool
    from mamf.methods.finetune import EpochStream

    pool = train_pool(dataset, config)
    images, labels = pool.all_images()
    batch = next(EpochStream(np.random.default_rng([config.seed, 11, config.data.ways]), images,
                             labels, pool.classes, 6))
    leaf = start.clone().requires_grad_(True)
    prompts = method.make_prompts(model, inputs)
    texts = class_embeddings(model, prompts, batch.classes, class_contexts(leaf, batch.classes))
    with torch.no_grad():
        image_emb = inputs.images(model, batch.images)
    logits = model.logit_scale().detach() * torch.nn.functional.normalize(image_emb, dim=-1) @ \
        torch.nn.functional.normalize(texts, dim=-1).T
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(batch.labels))
    (grad,) = torch.autograd.grad(loss, leaf)

    result = train(model, inputs, dataset, config, progress=False)
    assert result.steps == 1 and abs(result.losses[0] - float(loss.detach())) < 1e-5
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    moved = getattr(model, EXTENSION).vectors.detach()
    expected = start - 0.1 * (grad + 5e-4 * start)
    assert torch.allclose(moved, expected, atol=1e-6)
    assert float((moved - start).abs().max()) > 1e-4
    if specific:  # every class is a candidate, and each class's own context moves its own way
        steps = moved - start
        assert all(float(steps[c].abs().max()) > 1e-5 for c in range(len(dataset.classes)))
        assert not torch.allclose(steps[0], steps[1])


def test_cocoop_trains_its_meta_net_and_context(colour_folder):
    config = _config(colour_folder, "cocoop", **{"baseline.cocoop_lr": 0.5})
    model, dataset, inputs = prepare(config)
    towers = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, inputs, dataset, config, progress=False)
    context = getattr(model, EXTENSION)
    fresh = copy.deepcopy(model)
    methods.create("cocoop", config).add_to_model(fresh, inputs)  # the same seed: the start again
    start = getattr(fresh, EXTENSION)
    assert result.steps == 1
    for (name, p), q in zip(context.named_parameters(), start.parameters()):
        assert float((p - q).detach().abs().max()) > 1e-6, f"{name} got no gradient"
    # the meta-net is Linear(D, D/16), ReLU, Linear(D/16, W): 32 -> 2 -> 64 for the tiny CLIP
    assert context.meta_net[0].weight.shape == (2, 32)
    assert context.meta_net[2].weight.shape == (64, 2)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in towers.items())


def test_a_trained_coop_run_is_scored_with_its_context(colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--model", "tiny-random-clip", "--data", str(colour_folder), "--protocol", "coop",
            "--shots", "2", "--quiet"]
    assert main(["train", "--method", "coop", "--out", str(out), "--steps", "3",
                 "--set", "baseline.coop_class_specific=true", *args]) == 0
    assert main(["evaluate", "--run", str(out), "--out", str(tmp_path / "res"), "--quiet"]) == 0
    assert "coop" in capsys.readouterr().out


def test_wise_ft_leaves_the_prompt_learners_alone():
    from mamf.engine.wiseft import alphas

    config = build_config(overrides={"metatest.interpolate": [0, 1]})
    assert alphas(config, "coop") == alphas(config, "cocoop") == [None]
    assert alphas(config, "classical") == [0, 1]


def test_cosine_rates_by_hand():
    assert [cosine_lr(1.0, i, 4) for i in range(5)] == pytest.approx(
        [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0])


def test_a_cosine_run_logs_the_decayed_rates(colour_folder, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(colour_folder), "--out", str(out), "--steps", "4", "--lr", "0.01",
                 "--set", "train.lr_schedule=cosine", "--quiet"]) == 0
    with open(out / "train_log.csv") as f:
        rates = [float(r["lr"]) for r in csv.DictReader(f)]
    assert rates == pytest.approx([0.01, 0.01 * (1 + math.sqrt(0.5)) / 2, 0.005,
                                   0.01 * (1 - math.sqrt(0.5)) / 2])


def test_cosine_needs_a_known_step_count(colour_folder, tmp_path, capsys):
    code = main(["train", "--method", "mamf", "--model", "tiny-random-clip", "--data",
                 str(colour_folder), "--out", str(tmp_path / "run"), "--schedule", "sequential",
                 "--set", "train.lr_schedule=cosine", "--quiet"])
    assert code != 0 and "lr_schedule=cosine needs the run's step count" in \
        capsys.readouterr().err


def test_the_clip_lora_preset_is_the_papers_recipe():
    config = make_config("clip-lora", {"data.shots": 4, "data.protocol": "coop"})
    t = config.train
    assert (t.adapter, t.lora_rank, t.lora_alpha, t.lora_dropout, t.lr, t.lr_schedule,
            t.batch_size, t.method) == ("lora", 2, 1.0, 0.25, 2e-4, "cosine", 32, "classical")
    assert with_steps(config).train.steps == 2000  # 500 x 4 shots
    with pytest.raises(MamfError, match="steps_per_shot both"):
        make_config("clip-lora", {"train.steps": 10, "data.protocol": "coop"})


def test_preset_flag_loads_the_shipped_preset(colour_folder, tmp_path, capsys):
    assert main(["train", "--preset", "nonesuch", "--data", str(colour_folder), "--out",
                 str(tmp_path / "r")]) != 0
    assert "unknown preset 'nonesuch'" in capsys.readouterr().err


@pytest.mark.slow  # the pretrained offline model
def test_minilm_over_its_own_input_embeddings_is_minilm():
    model = load_model("effnet-minilm")
    tokens = model.tokenize(["a photo of a red.", "An image of the digit 3."])
    with torch.no_grad():
        direct = model.encode_texts(tokens)
        through = model.encode_text_embeddings(model.text_input_embeddings(tokens), tokens)
    assert torch.allclose(direct, through, atol=1e-6)
