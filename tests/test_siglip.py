"""SigLIP through transformers' SiglipModel: its own pooling, logit bias and sigmoid loss."""

from __future__ import annotations

import json

import pytest
import torch

from mamf.cli import main
from mamf.models import load_model
from mamf.models.registry import families, model_names
from mamf.results import read_rows
from mamf.runs.export import export_run


def test_the_task_loss_is_siglips_own_loss():
    """With a batch's own captions as the candidates (image i's class is caption i), mamf's
    logits and loss are exactly what SiglipModel computes with return_loss."""
    model = load_model("tiny-random-siglip")
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=g)
    pixels = model.preprocess(images)
    tokens = model.tokenize(["red", "a green square", "blue", "a photo of a yellow thing"])
    with torch.no_grad():
        logits = model.task_logits(model.encode_images(pixels), model.encode_texts(tokens))
        loss = model.task_loss(logits, torch.arange(4))
        own = model.siglip(input_ids=tokens["input_ids"], pixel_values=pixels, return_loss=True)
    assert torch.allclose(logits, own.logits_per_image, atol=1e-5)
    assert loss.item() == pytest.approx(own.loss.item(), rel=1e-5)
    assert model.siglip.logit_bias.item() == -10.0  # the bias is in the logits: not CLIP's
    ce = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    assert loss.item() != pytest.approx(ce.item())


def test_every_family_goes_through_one_registry():
    assert {"clip", "siglip"} <= set(families())
    assert {"tiny-random-clip", "tiny-random-siglip", "effnet-minilm"} <= set(model_names())


def test_siglip_trains_evaluates_and_exports(colour_folder, tmp_path):
    """MAMF trains SigLIP with the sigmoid loss (the logit bias trains too), the run is
    meta-tested, exported for SiglipModel.from_pretrained and that folder loads in mamf."""
    from transformers import SiglipModel

    run, out = tmp_path / "run", tmp_path / "eval"
    assert main(["train", "--method", "mamf", "--model", "tiny-random-siglip", "--data",
                 str(colour_folder), "--out", str(run), "--ways", "3", "--lr", "1e-3",
                 "--steps", "3", "--batch-size", "6", "--quiet"]) == 0
    losses = json.loads((run / "train.json").read_text())["losses"]
    assert len(losses) == 3 and losses[0] > 1.0  # ~ 2 classes x softplus(10): not a CE value
    from mamf.runs.run_folder import load_run

    _, trained = load_run(run)
    assert trained.siglip.logit_bias.item() != -10.0
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out", str(out),
                 "--ways", "3", "--quiet", "--set", "metatest.epochs=1"]) == 0
    row = read_rows(out / "results.jsonl")[0]
    assert row.model == "tiny-random-siglip" and row.n_tasks > 0

    export_run(run, "hf", tmp_path / "hf")  # checks itself within 1e-5
    loaded = SiglipModel.from_pretrained(str(tmp_path / "hf"), use_safetensors=True)
    assert loaded.logit_bias.item() == pytest.approx(trained.siglip.logit_bias.item())
    # the export carries its tokenizer: the folder is a model name as a CLIP folder is
    again = load_model(str(tmp_path / "hf"))
    assert torch.equal(again.tokenize(["a red square"])["input_ids"],
                       trained.tokenize(["a red square"])["input_ids"])
    assert type(again).__name__ == "HFSiglip" and again.image_size == 32


def test_lora_on_siglip_trains_the_logit_bias_beside_the_adapters(colour_folder, tmp_path):
    from mamf.runs.run_folder import load_run

    run = tmp_path / "run"
    assert main(["train", "--method", "classical", "--model", "tiny-random-siglip", "--data",
                 str(colour_folder), "--out", str(run), "--lr", "1e-2", "--steps", "3",
                 "--batch-size", "6", "--quiet", "--set", "train.adapter=lora"]) == 0
    _, model = load_run(run)
    assert model.siglip.logit_bias.item() != -10.0
    export_run(run, "peft", tmp_path / "peft")
    manifest = json.loads((tmp_path / "peft" / "mamf_export.json").read_text())
    assert manifest["loss_parameters"]["siglip.logit_bias"] == \
        pytest.approx([model.siglip.logit_bias.item()])
