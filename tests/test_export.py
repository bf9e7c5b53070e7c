"""`mamf export`: hf, peft and onnx folders loaded back by their own libraries, equal to the run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from mamf.cli import main
from mamf.runs.export import MANIFEST, export_run
from mamf.runs.run_folder import load_run
from mamf.system.errors import MamfError


def _train(folder, out, *extra):
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(out), "--lr", "1e-2", "--steps", "3",
                 "--batch-size", "6", "--quiet", *extra]) == 0
    return out


def _inputs(model):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (2, model.image_size, model.image_size, 3), dtype=torch.uint8,
                           generator=g)
    return model.preprocess(images), model.tokenize(["red", "a photo of a green square"])


@torch.no_grad()
def _mamf(model, pixels, tokens):
    model.eval()
    return model.encode_images(pixels), model.encode_texts(tokens)


@torch.no_grad()
def _hf(clip, pixels, tokens):
    image, text = clip.get_image_features(pixel_values=pixels), clip.get_text_features(**tokens)
    pool = [t if isinstance(t, torch.Tensor) else t.pooler_output for t in (image, text)]
    return pool[0], pool[1]


def _close(a, b, tol=1e-5):
    return all((x - y).abs().max().item() <= tol for x, y in zip(a, b))


def _mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import make_folder

    root = tmp_path_factory.mktemp("export")
    folder = make_folder(root / "colours")
    return {"full": _train(folder, root / "full"),
            "lora": _train(folder, root / "lora", "--set", "train.adapter=lora",
                           "--set", "train.heads=random"),
            "partial": _train(folder, root / "partial", "--set", "train.unfreeze_image_blocks=1",
                              "--set", "train.freeze_text_tower=true",
                              "--set", "train.augment=false")}


def test_hf_folder_loads_in_transformers_with_the_runs_embeddings(runs, tmp_path):
    from transformers import CLIPModel

    out = tmp_path / "hf"
    written = export_run(runs["full"], "hf", out)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", MANIFEST} <= \
        set(written)
    _, model = load_run(runs["full"])
    pixels, tokens = _inputs(model)
    clip = CLIPModel.from_pretrained(str(out), use_safetensors=True).eval()
    assert _close(_hf(clip, pixels, tokens), _mamf(model, pixels, tokens))
    assert clip.logit_scale.item() == pytest.approx(model.log_logit_scale.item())
    for path in out.iterdir():  # files follow the umask (safetensors alone writes 0600)
        assert path.stat().st_mode & 0o777 == _mode(), path.name
    assert (runs["full"] / "model.safetensors").stat().st_mode & 0o777 == _mode()


def test_lora_exports_merged_and_as_a_peft_adapter(runs, tmp_path):
    from peft import PeftModel
    from transformers import CLIPModel

    from mamf.models import load_model

    _, model = load_run(runs["lora"])
    pixels, tokens = _inputs(model)
    want = _mamf(model, pixels, tokens)
    base = load_model("tiny-random-clip").clip.eval()
    assert not _close(_hf(base, pixels, tokens), want, 1e-3)  # the adapters and heads trained

    export_run(runs["lora"], "hf", tmp_path / "hf")
    merged = CLIPModel.from_pretrained(str(tmp_path / "hf"), use_safetensors=True).eval()
    assert _close(_hf(merged, pixels, tokens), want)

    export_run(runs["lora"], "peft", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2
    assert set(config["modules_to_save"]) == {"visual_projection", "text_projection"}
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "peft")).eval()
    assert _close(_hf(adapted.base_model.model, pixels, tokens), want)


def test_onnx_towers_match_pytorch(runs, tmp_path):
    import numpy as np
    import onnxruntime as ort

    export_run(runs["lora"], "onnx", tmp_path / "onnx")
    _, model = load_run(runs["lora"])
    pixels, tokens = _inputs(model)
    image, text = _mamf(model, pixels, tokens)
    img = ort.InferenceSession(str(tmp_path / "onnx" / "image.onnx"))
    got = img.run(None, {"pixel_values": pixels.numpy()})[0]
    assert np.abs(got - image.numpy()).max() <= 1e-5
    txt = ort.InferenceSession(str(tmp_path / "onnx" / "text.onnx"))
    feed = {i.name: tokens[i.name].numpy() for i in txt.get_inputs()}
    assert np.abs(txt.run(None, feed)[0] - text.numpy()).max() <= 1e-5


def test_a_partial_run_saves_only_what_trained(runs, tmp_path):
    """One image block unfrozen, the text tower frozen: the weights file holds that block, the
    post-norm, the heads' trained part and the logit scale; load_run rebuilds the rest."""
    with safe_open(str(runs["partial"] / "model.safetensors"), "pt") as f:
        partial = set(f.keys())
    with safe_open(str(runs["full"] / "model.safetensors"), "pt") as f:
        full = set(f.keys())
    assert len(partial) < len(full) / 2  # the logit scale may be saved under either name
    assert not any("text_model" in k for k in partial)
    assert not any("vision_model.encoder.layers.0." in k for k in partial)
    assert any("vision_model.encoder.layers.1." in k for k in partial)
    _, model = load_run(runs["partial"])
    pixels, tokens = _inputs(model)
    base = load_run(runs["full"])[1]  # another run: its image tower differs
    assert not _close(_mamf(model, pixels, tokens)[:1], _mamf(base, pixels, tokens)[:1], 1e-4)
    export_run(runs["partial"], "hf", tmp_path / "hf")  # the export checks itself against it


def test_export_refusals_are_one_line(runs, tmp_path):
    with pytest.raises(MamfError, match="trained without adapters"):
        export_run(runs["full"], "peft", tmp_path / "p")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(MamfError, match="not empty"):
        export_run(runs["full"], "onnx", tmp_path / "busy")
    with pytest.raises(MamfError, match="not a finished training run"):
        export_run(tmp_path, "hf", tmp_path / "q")


def test_the_export_command_prints_one_error_line(runs, tmp_path, capsys):
    assert main(["export", str(runs["full"]), "--format", "peft", "--out",
                 str(tmp_path / "p")]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mamf: error:") and "peft" in err[0]
    assert main(["export", str(runs["full"]), "--format", "onnx", "--out",
                 str(tmp_path / "o")]) == 0
    assert "checked against the run" in capsys.readouterr().out
