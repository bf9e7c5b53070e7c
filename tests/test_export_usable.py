"""Exports used as their libraries' users use them: processor, tokenizer, metadata and manifest
reproduce mamf's probabilities without mamf; refused and interrupted exports leave nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mamf.api import classify
from mamf.cli import main
from mamf.runs.export import MANIFEST, export_run
from mamf.system.errors import MamfError

LABELS = ["red", "green", "blue"]
TEMPLATE = "A photo of a {label}."
DOCS = Path(__file__).resolve().parents[1] / "docs" / "exports.md"


def _train(folder, out, model="tiny-random-clip", *extra):
    assert main(["train", "--method", "classical", "--model", model, "--data", str(folder),
                 "--out", str(out), "--lr", "1e-2", "--steps", "3", "--batch-size", "6",
                 "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import make_folder

    root = tmp_path_factory.mktemp("usable")
    folder = make_folder(root / "colours")
    return {"clip": _train(folder, root / "clip"),
            "siglip": _train(folder, root / "siglip", "tiny-random-siglip"),
            "lora": _train(folder, root / "lora", "tiny-random-clip", "--set",
                           "train.adapter=lora", "--set", "train.heads=random"),
            "folder": folder}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Photos of several shapes, non-square ones included (mamf crops, never squashes)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(32, 32), (45, 90), (120, 40), (33, 61)]):
        small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)  # smooth, as photos are
        paths.append(str(root / f"photo{i}.png"))
        img.save(paths[-1])
    return paths


def _probs(model, processor, paths):
    inputs = processor(text=[TEMPLATE.format(label=x) for x in LABELS],
                       images=[Image.open(p) for p in paths], padding="max_length",
                       return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits_per_image.softmax(dim=-1).numpy()


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_export_with_its_processor_gives_mamfs_probabilities(runs, images, tmp_path, kind):
    from transformers import AutoModel, AutoProcessor

    out = tmp_path / "hf"
    written = export_run(runs[kind], "hf", out)
    assert {"tokenizer.json", "preprocessor_config.json"} <= set(written)
    model = AutoModel.from_pretrained(str(out)).eval()
    processor = AutoProcessor.from_pretrained(str(out))
    assert processor.image_processor.crop_size["height"] == model.config.vision_config.image_size
    want = classify(runs[kind], images, LABELS, template=TEMPLATE)
    got = _probs(model, processor, images)
    assert np.abs(got - want).max() <= 1e-3, (got, want)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_peft_export_carries_its_base_and_its_logit_scale(runs, images, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel, AutoProcessor

    out = tmp_path / "peft"
    export_run(runs["lora"], "peft", out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["base_model"] == "base" and (out / "base" / "config.json").is_file()
    assert set(manifest["parameters"]) == {"logit_scale"}
    model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(out / "base")), str(out))
    with torch.no_grad():
        for name, value in manifest["parameters"].items():
            model.get_base_model().get_parameter(name).fill_(value)
    got = _probs(model.eval(), AutoProcessor.from_pretrained(str(out)), images)
    want = classify(runs["lora"], images, LABELS, template=TEMPLATE)
    assert np.abs(got - want).max() <= 1e-3


def test_onnx_export_carries_its_preprocessing_in_its_metadata(runs, tmp_path):
    import onnxruntime as ort

    from mamf.runs.run_folder import load_run

    out = tmp_path / "onnx"
    export_run(runs["clip"], "onnx", out)
    _, model = load_run(runs["clip"])
    for graph in ("image.onnx", "text.onnx"):
        meta = ort.InferenceSession(str(out / graph)).get_modelmeta().custom_metadata_map
        assert int(meta["image_size"]) == model.image_size
        assert json.loads(meta["image_mean"]) == list(model.image_mean)
        assert json.loads(meta["image_std"]) == list(model.image_std)
        assert float(meta["logit_scale"]) == pytest.approx(float(model.logit_scale().detach()))
        assert meta["text_padding"] == "longest" and "crop" in meta["resize"]
    assert (out / "tokenizer.json").is_file()


def test_a_run_with_a_learned_prompt_context_is_refused_not_exported_as_the_base(
        runs, tmp_path, images):
    """CoOp's context lives outside the towers: an export would be the base model bit for bit,
    and classify would ignore the context; both refuse in one line."""
    run = tmp_path / "coop"
    assert main(["train", "--method", "coop", "--model", "tiny-random-clip", "--data",
                 str(runs["folder"]), "--out", str(run), "--protocol", "coop", "--shots", "2",
                 "--steps", "2", "--batch-size", "4", "--quiet"]) == 0
    for fmt in ("hf", "onnx"):
        with pytest.raises(MamfError, match="prompt|outside the model's towers") as e:
            export_run(run, fmt, tmp_path / fmt)
        assert "\n" not in str(e.value) and not (tmp_path / fmt).exists()
    with pytest.raises(MamfError, match="outside the model's towers"):
        classify(run, images, LABELS)


def test_an_interrupted_export_leaves_no_folder_and_a_rerun_succeeds(runs, tmp_path,
                                                                      monkeypatch):
    import mamf.runs.export as export

    out = tmp_path / "hf"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C between writing and checking

    with monkeypatch.context() as m:
        m.setattr(export, "_load_hf", killed)
        with pytest.raises(KeyboardInterrupt):
            export_run(runs["clip"], "hf", out)
    assert not out.exists() and not list(tmp_path.iterdir())
    # what a kill -9 leaves: a hidden half folder beside DIR, cleared by the next export
    stale = tmp_path / ".hf.exporting"
    stale.mkdir()
    (stale / "config.json").write_text("{")
    assert MANIFEST in export_run(runs["clip"], "hf", out)
    assert (out / MANIFEST).is_file() and not stale.exists()


def test_a_second_export_into_the_same_folder_at_once_is_refused_and_harms_neither(runs,
                                                                                   tmp_path):
    from mamf.system.lock import exclusive

    staging = tmp_path / ".hf.exporting"
    with exclusive(staging):  # an export into tmp_path/hf is under way
        (staging / "config.json").write_text("{}")
        with pytest.raises(MamfError, match="another mamf process"):
            export_run(runs["clip"], "hf", tmp_path / "hf")
        assert (staging / "config.json").is_file()  # the other export's files are kept
    assert not (tmp_path / "hf").exists()


def test_an_out_that_is_a_file_is_one_error_line(runs, tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_text("keep me")
    assert main(["export", str(runs["clip"]), "--format", "hf", "--out", str(target)]) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "is a file" in err[0]
    assert target.read_text() == "keep me"


def _snippets() -> dict[str, str]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n# (use_\w+)\.py\n(.*?)```", text, re.S)
    return dict(blocks)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,kind", [("hf", "clip"), ("hf", "siglip"), ("peft", "lora"),
                                      ("onnx", "clip"), ("onnx", "siglip")])
def test_the_docs_snippets_run_without_mamf_and_give_its_probabilities(runs, images, tmp_path,
                                                                       fmt, kind):
    """docs/exports.md's script for each format, run as written in a process where importing
    mamf fails, prints the probabilities mamf.classify gives."""
    snippets = _snippets()
    assert set(snippets) == {"use_hf", "use_peft", "use_onnx"}
    out = tmp_path / fmt
    export_run(runs[kind], fmt, out)
    script = tmp_path / f"use_{fmt}.py"
    script.write_text(snippets[f"use_{fmt}"])
    guard = ("import runpy, sys; sys.modules['mamf'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", guard, str(script), str(out), *images],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    want = classify(runs[kind], images, LABELS, template=TEMPLATE)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-3
