"""Frozen image-backbone outputs and frozen text-tower embeddings on the CPU come from
onnxruntime, match PyTorch's within 1e-4, and fall back to PyTorch wherever onnxruntime cannot
serve."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from conftest import make_folder

from mamf.data.dataset import ImageDataset
from mamf.features import frozen_engine
from mamf.features.inputs import ModelInputs
from mamf.models import load_model
from mamf.models.hf_clip import HFClip

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(frozen_engine.ENV, raising=False)
    monkeypatch.setattr(frozen_engine, "_logged", set())
    return tmp_path / "cache"


def features(model, folder, **kw) -> torch.Tensor:
    dataset = ImageDataset.load(folder, model.image_size)
    return ModelInputs(model, dataset, CPU, freeze_image_backbone=True, **kw).features


def eager(model, folder) -> torch.Tensor:
    dataset = ImageDataset.load(folder, model.image_size)
    with torch.no_grad():
        return model.image_backbone(model.preprocess(dataset.batch(range(len(dataset.images)))))


def test_onnxruntime_outputs_match_pytorch(colour_folder, cache, monkeypatch):
    model = load_model("tiny-random-clip").eval()
    ours = features(model, colour_folder, feature_batch=16)  # 60 images: chunks of 16 and 12
    assert len(list(cache.rglob("*.onnx"))) == 1  # the graph was exported and kept
    assert not any(m.training for m in model.modules())  # the export left the model in eval mode
    assert torch.allclose(ours, eager(model, colour_folder), rtol=0, atol=1e-4)
    monkeypatch.setenv(frozen_engine.ENV, "torch")
    forced = features(model, colour_folder, feature_batch=16)
    assert torch.equal(forced, eager(model, colour_folder))  # PyTorch's own numbers, forced
    assert len(list(cache.rglob("features-*.npz"))) == 2  # cached per engine


def test_contiguous_preprocessing_gives_the_same_values(colour_folder):
    """The engine's faster NCHW preprocessing feeds it exactly the values PyTorch is given, so the
    cached features keep their bits; PyTorch's own path keeps its channels-last strides."""
    model = load_model("tiny-random-clip").eval()
    images = ImageDataset.load(colour_folder, model.image_size).batch(range(12))
    default, packed = model.preprocess(images), model.preprocess(images, contiguous=True)
    assert torch.equal(default, packed)
    assert packed.is_contiguous() and not default.is_contiguous()


def test_the_exported_graph_is_reused(tmp_path, cache, monkeypatch):
    model = load_model("tiny-random-clip").eval()
    features(model, make_folder(tmp_path / "a", n_classes=3, per_class=4, seed=1))
    monkeypatch.setattr(frozen_engine, "_export", lambda *a: pytest.fail("exported again"))
    folder = make_folder(tmp_path / "b", n_classes=3, per_class=4, seed=2)
    assert torch.allclose(features(model, folder), eager(model, folder), rtol=0, atol=1e-4)


@pytest.mark.parametrize("device, precision, training, setting", [
    ("cpu", "fp32", False, "torch"), ("cpu", "bf16", False, ""), ("meta", "fp32", False, ""),
    ("cpu", "fp32", True, "")])
def test_pytorch_where_onnxruntime_cannot_serve(device, precision, training, setting, cache,
                                                 monkeypatch):
    model = load_model("tiny-random-clip").train(training)
    monkeypatch.setenv(frozen_engine.ENV, setting)
    assert frozen_engine.engine_for(model, torch.device(device), precision) == frozen_engine.TORCH
    monkeypatch.setenv(frozen_engine.ENV, "")
    model.eval()
    assert frozen_engine.engine_for(model, CPU, "fp32") == frozen_engine.ONNXRUNTIME


def test_failed_export_falls_back_with_one_warning(colour_folder, cache, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::whatever\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    model = load_model("tiny-random-clip").eval()
    with caplog.at_level(logging.WARNING):
        first = features(model, colour_folder)
        for p in cache.rglob("features-*.npz"):
            p.unlink()
        features(model, colour_folder)
    assert torch.equal(first, eager(model, colour_folder))
    notes = [r.getMessage() for r in caplog.records if "ONNX" in r.getMessage()]
    assert notes == ["HFClip: no ONNX export of the image backbone (RuntimeError: unsupported "
                     "operator aten::whatever); frozen image features are computed with PyTorch"]
    assert not list(cache.rglob("*.onnx"))


class BranchingClip(HFClip):
    """A backbone that decides from its input's values: tracing keeps only the branch it saw."""

    def image_backbone(self, pixel_values):
        out = super().image_backbone(pixel_values)
        return out * 2 if bool(pixel_values.abs().sum() > 0) else out


def test_an_export_that_disagrees_with_pytorch_is_not_used(colour_folder, cache, caplog):
    tiny = load_model("tiny-random-clip").eval()
    model = BranchingClip(tiny.clip, tiny.tokenizer, name="branching",
                          image_mean=tiny.image_mean, image_std=tiny.image_std).eval()
    with caplog.at_level(logging.WARNING):
        ours = features(model, colour_folder)
    assert torch.equal(ours, eager(model, colour_folder))
    assert any("differ from PyTorch's" in r.getMessage() for r in caplog.records)
    assert not list(cache.rglob("*.onnx"))


@pytest.mark.slow
def test_effnet_minilm_onnxruntime_matches_pytorch(tmp_path, cache):
    model = load_model("effnet-minilm").eval()
    folder = make_folder(tmp_path / "photos", n_classes=3, per_class=3, size=64)
    ours = features(model, folder)
    assert len(list(cache.rglob("*.onnx"))) == 1
    assert torch.allclose(ours, eager(model, folder), rtol=0, atol=1e-4)


def test_without_onnxruntime_pytorch_computes_them(colour_folder, cache, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    model = load_model("tiny-random-clip").eval()
    with caplog.at_level(logging.INFO):
        ours = features(model, colour_folder)
    assert torch.equal(ours, eager(model, colour_folder))
    assert any("onnxruntime is not installed" in r.getMessage() for r in caplog.records)
    assert not list(cache.rglob("*.onnx"))


# -- the frozen text tower

TWO = ["a photo of a {label}.", "a drawing of a {}, which is quite long."]


def text_embeddings(model, folder, templates=None, **kw) -> torch.Tensor:
    dataset = ImageDataset.load(folder, model.image_size, templates=templates)
    return ModelInputs(model, dataset, CPU, freeze_text_tower=True, **kw).text_cache


def eager_texts(model, folder, templates=None) -> torch.Tensor:
    """Every class's embedding by eager PyTorch, prompt by prompt (no padding at all)."""
    dataset = ImageDataset.load(folder, model.image_size, templates=templates)
    rows = []
    with torch.no_grad():
        for group in dataset.ensemble or [[p] for p in dataset.prompts]:
            embeddings = torch.cat([model.encode_texts(model.tokenize([p])) for p in group])
            rows.append(embeddings[0] if len(group) == 1 else
                        torch.nn.functional.normalize(embeddings, dim=-1).mean(0))
    return torch.stack(rows)


def text_graphs(cache) -> list:
    return list(cache.rglob("*-text-*.onnx"))


@pytest.mark.parametrize("templates", [None, TWO])
def test_text_embeddings_on_onnxruntime_match_pytorch(templates, colour_folder, cache):
    model = load_model("tiny-random-clip").eval()
    # 6 classes in chunks of 4 prompts: chunks of 4 and 2 classes, or of 2 and 2 and 2
    ours = text_embeddings(model, colour_folder, templates, feature_batch=4)
    assert len(text_graphs(cache)) == 1  # exported and kept: onnxruntime computed them
    assert not any(m.training for m in model.modules())
    assert torch.allclose(ours, eager_texts(model, colour_folder, templates), rtol=0, atol=1e-4)


def test_the_exported_text_graph_is_reused(tmp_path, cache, monkeypatch):
    model = load_model("tiny-random-clip").eval()
    text_embeddings(model, make_folder(tmp_path / "a", n_classes=3, per_class=1))
    monkeypatch.setattr(frozen_engine, "_export", lambda *a: pytest.fail("exported again"))
    folder = make_folder(tmp_path / "b", n_classes=5, per_class=1)  # other prompts, other shapes
    ours = text_embeddings(model, folder, TWO)
    assert torch.allclose(ours, eager_texts(model, folder, TWO), rtol=0, atol=1e-4)
    assert len(text_graphs(cache)) == 1


def test_text_tower_forced_to_pytorch_exports_nothing(colour_folder, cache, monkeypatch):
    monkeypatch.setenv(frozen_engine.ENV, "torch")
    monkeypatch.setattr(frozen_engine, "onnx_text_tower", lambda *a: pytest.fail("onnxruntime"))
    model = load_model("tiny-random-clip").eval()
    dataset = ImageDataset.load(colour_folder, model.image_size)
    ours = text_embeddings(model, colour_folder)
    with torch.no_grad():
        assert torch.equal(ours, model.encode_texts(model.tokenize(dataset.prompts)))
    assert not list(cache.rglob("*.onnx"))


def test_failed_text_export_falls_back_with_one_warning(colour_folder, cache, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::whatever\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    model = load_model("tiny-random-clip").eval()
    dataset = ImageDataset.load(colour_folder, model.image_size)
    with caplog.at_level(logging.WARNING):
        first = text_embeddings(model, colour_folder)
        text_embeddings(model, colour_folder)
    with torch.no_grad():
        assert torch.equal(first, model.encode_texts(model.tokenize(dataset.prompts)))
    notes = [r.getMessage() for r in caplog.records if "ONNX" in r.getMessage()]
    assert notes == ["HFClip: no ONNX export of the text tower (RuntimeError: unsupported "
                     "operator aten::whatever); frozen text embeddings are computed with PyTorch"]
    assert not list(cache.rglob("*.onnx"))


class FixedLengthClip(HFClip):
    """A text tower that decides from its input's length: tracing keeps the branch it saw. The
    colours' longest prompt, 'A photo of a magenta.', is 23 tokens; the export traces 22."""

    def encode_texts(self, tokens):
        out = super().encode_texts(tokens)
        return out * 2 if tokens["input_ids"].shape[1] >= 23 else out


def test_a_text_export_that_disagrees_with_pytorch_is_not_used(colour_folder, cache, caplog):
    tiny = load_model("tiny-random-clip").eval()
    model = FixedLengthClip(tiny.clip, tiny.tokenizer, name="fixed",
                            image_mean=tiny.image_mean, image_std=tiny.image_std).eval()
    dataset = ImageDataset.load(colour_folder, model.image_size)
    with caplog.at_level(logging.WARNING):
        ours = text_embeddings(model, colour_folder)
    with torch.no_grad():
        assert torch.equal(ours, model.encode_texts(model.tokenize(dataset.prompts)))
    assert any("differ from PyTorch's" in r.getMessage() for r in caplog.records)
    assert not list(cache.rglob("*.onnx"))


@pytest.mark.slow
def test_effnet_minilm_text_tower_on_onnxruntime_matches_pytorch(tmp_path, cache):
    model = load_model("effnet-minilm").eval()
    folder = make_folder(tmp_path / "photos", n_classes=5, per_class=1)
    ours = text_embeddings(model, folder, TWO, feature_batch=4)
    assert len(text_graphs(cache)) == 1
    assert torch.allclose(ours, eager_texts(model, folder, TWO), rtol=0, atol=1e-4)


def held(cache) -> np.ndarray:
    """Which images the one onnxruntime features file holds."""
    (path,) = cache.rglob("features-*.npz")
    with np.load(path) as stored:
        return stored["have"]


def test_only_the_images_read_are_computed_and_bit_for_bit_a_full_pass(colour_folder, cache,
                                                                       monkeypatch, caplog):
    """On onnxruntime `reads` computes those images only (a demo's dev split is never scored),
    in chunks other than a full pass's, with a full pass's bits; an image read though not
    declared is computed when first read, as bit-identical."""
    model = load_model("tiny-random-clip").eval()
    full = features(model, colour_folder, feature_batch=16)
    for p in cache.rglob("features-*.npz"):
        p.unlink()
    dataset = ImageDataset.load(colour_folder, model.image_size)
    reads = np.arange(0, 60, 3)  # 20 of 60, none of them side by side
    inputs = ModelInputs(model, dataset, CPU, freeze_image_backbone=True, feature_batch=16,
                         reads=reads)
    assert held(cache).nonzero()[0].tolist() == reads.tolist()
    assert torch.equal(inputs.frozen_features(reads), full[reads])
    with caplog.at_level(logging.INFO):
        late = inputs.frozen_features(np.array([1, 2, 3]))
    assert torch.equal(late, full[[1, 2, 3]])
    assert "computing the frozen image features of 2 more image(s)" in caplog.text
    assert held(cache).sum() == 22  # kept for the next run
    # a later run whose reads the file already holds computes nothing (and reads the rest later)
    monkeypatch.setattr(ModelInputs, "_compute_backbone_features",
                        lambda *a, **k: pytest.fail("computed again"))
    again = ModelInputs(model, dataset, CPU, freeze_image_backbone=True, reads=reads[:5])
    assert torch.equal(again.frozen_features(reads), full[reads])
    monkeypatch.undo()
    monkeypatch.setenv("MAMF_CACHE_DIR", str(cache))
    assert torch.equal(again.frozen_features(np.arange(60)), full)
    assert held(cache).all()


def test_pytorch_computes_every_image_whatever_is_declared(colour_folder, cache, monkeypatch):
    """PyTorch's kernels may round by batch, so on it `reads` is ignored: the chunks, and the
    bits, are always those of the full pass."""
    monkeypatch.setenv(frozen_engine.ENV, "torch")
    model = load_model("tiny-random-clip").eval()
    dataset = ImageDataset.load(colour_folder, model.image_size)
    inputs = ModelInputs(model, dataset, CPU, freeze_image_backbone=True, reads=np.arange(5))
    assert inputs._missing is None and held(cache).all()
    assert torch.equal(inputs.features, eager(model, colour_folder))


def test_a_features_file_of_an_earlier_version_holds_every_image(colour_folder, cache):
    model = load_model("tiny-random-clip").eval()
    full = features(model, colour_folder)
    (path,) = cache.rglob("features-*.npz")
    np.save(path.with_suffix(".npy"), full.numpy() + 1)  # as earlier versions wrote it
    path.unlink()
    assert torch.equal(features(model, colour_folder), full + 1)
