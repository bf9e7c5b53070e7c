"""Partial unfreezing: the last k blocks of a tower train, the frozen part below is run once and
its outputs at the boundary are cached (train.unfreeze_image_blocks, train.unfreeze_text_layers)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from mamf.cli import main
from mamf.config import build_config
from mamf.data.dataset import ImageDataset
from mamf.engine.metatest import WeightSnapshot, evaluation_tasks, meta_test
from mamf.engine.training import train
from mamf.features import frozen_engine
from mamf.features.inputs import ModelInputs
from mamf.models import load_model
from mamf.runs.prepare import prepare
from mamf.system.errors import MamfError

CPU = torch.device("cpu")


def split_errors(model, pixels, texts):
    """Largest difference between the split forward (bottom, then top) and the full forward, for
    every k of each tower."""
    tokens = model.tokenize(texts)
    out = {}
    with torch.no_grad():
        full_image, full_text = model.image_backbone(pixels), model.encode_texts(tokens)
        for k in range(model.image_blocks() + 1):
            split = model.image_top(model.image_bottom(pixels, k), k)
            out["image", k] = float((split - full_image).abs().max())
        for k in range(model.text_layers() + 1):
            split = model.text_top(model.text_bottom(tokens, k), tokens, k)
            out["text", k] = float((split - full_text).abs().max())
    return out


TEXTS = ["a photo of a red thing.", "blue", "a rather longer prompt, padded past the others."]


def test_the_split_forward_equals_the_full_forward():
    model = load_model("tiny-random-clip").eval()
    pixels = torch.randn(3, 3, model.image_size, model.image_size,
                         generator=torch.Generator().manual_seed(0))
    errors = split_errors(model, pixels, TEXTS)
    assert set(errors) == {("image", k) for k in range(3)} | {("text", k) for k in range(3)}
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.slow
def test_effnet_minilm_split_forward_equals_the_full_forward():
    model = load_model("effnet-minilm").eval()
    assert (model.image_blocks(), model.text_layers()) == (16, 6)
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    errors = split_errors(model, pixels, TEXTS)
    assert len(errors) == 17 + 7
    assert max(errors.values()) <= 1e-5, errors


def inputs(model, folder, **kw) -> ModelInputs:
    return ModelInputs(model, ImageDataset.load(folder, model.image_size), CPU, **kw)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(frozen_engine.ENV, raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_cached_boundaries_give_the_end_to_end_embeddings(colour_folder, cache, monkeypatch,
                                                          engine):
    if engine == "torch":
        monkeypatch.setenv(frozen_engine.ENV, "torch")
    model = load_model("tiny-random-clip").eval()
    whole = inputs(model, colour_folder)
    split = inputs(model, colour_folder, image_top_blocks=1, text_top_layers=1, feature_batch=16)
    assert split.features.shape == (60, 17, 64)  # [images, tokens, width] below the last layer
    assert split.text_boundary.shape[:2] == whole.tokens["input_ids"].shape
    idx, classes = np.array([0, 13, 59, 7]), np.array([4, 0, 2])
    with torch.no_grad():
        assert torch.allclose(split.images(model, idx), whole.images(model, idx), atol=1e-4)
        assert torch.allclose(split.texts(model, classes), whole.texts(model, classes), atol=1e-5)
    if engine == "onnxruntime":
        assert len(list(cache.rglob("HFClip-below1-*.onnx"))) == 1  # the bottom, exported


def test_the_boundary_cache_is_written_once_and_keyed_by_k_and_the_frozen_weights(
        colour_folder, cache, monkeypatch):
    model = load_model("tiny-random-clip").eval()
    files = lambda: sorted(colour_folder.parent.rglob("features-*.npz"))  # noqa: E731
    first = inputs(model, colour_folder, image_top_blocks=1).features
    assert len(files()) == 1
    top = model.image_top_parameters(1)
    with torch.no_grad():  # a trained top leaves the frozen part, and so its cache, as it was
        top[0].add_(1.0)
    monkeypatch.setattr(ModelInputs, "_compute_backbone_features",
                        lambda *a: pytest.fail("computed again"))
    assert torch.equal(inputs(model, colour_folder, image_top_blocks=1).features, first)
    assert len(files()) == 1
    monkeypatch.undo()
    monkeypatch.setenv("MAMF_CACHE_DIR", str(cache))
    inputs(model, colour_folder, image_top_blocks=2)
    assert len(files()) == 2  # another boundary, another file
    with torch.no_grad():  # a change below the boundary is another cache
        model.clip.vision_model.encoder.layers[0].mlp.fc1.bias.add_(1.0)
    changed = inputs(model, colour_folder, image_top_blocks=1).features
    assert len(files()) == 3
    assert not torch.allclose(changed, first)
    inputs(model, colour_folder, freeze_image_backbone=True)
    assert len(files()) == 4  # the frozen tower's cache is a file of its own


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_training_the_last_block_changes_only_the_top_and_the_meta_test_restores_it(
        colour_folder, cache):
    config = build_config(overrides={
        "model": "tiny-random-clip", "data.root": str(colour_folder), "data.ways": 3,
        "train.method": "classical", "train.steps": 6, "train.lr": 1e-2, "train.batch_size": 8,
        "train.augment": False, "train.unfreeze_image_blocks": 1,
        "train.unfreeze_text_layers": 1, "metatest.lr": 1e-2, "metatest.epochs": 2,
        "data.tasks": 3})
    model, dataset, prepared = prepare(config, fresh=True)
    names = trainable_names(model)
    expected = {"log_logit_scale", "clip.visual_projection.weight",
                "clip.text_projection.weight", "clip.vision_model.post_layernorm.weight",
                "clip.vision_model.post_layernorm.bias", "clip.text_model.final_layer_norm.weight",
                "clip.text_model.final_layer_norm.bias"}
    assert expected <= names
    assert {n for n in names - expected if ".layers.1." not in n} == set()
    assert any("vision_model.encoder.layers.1." in n for n in names)
    assert any("text_model.encoder.layers.1." in n for n in names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, prepared, dataset, config, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= names
    assert any("vision_model.encoder.layers.1." in n for n in changed)
    assert any("text_model.encoder.layers.1." in n for n in changed)

    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert {id(p) for p in WeightSnapshot(model).live} == {
        id(p) for n, p in model.named_parameters() if n in names}
    params = dict(model.named_parameters())
    top, bottom = "clip.vision_model.encoder.layers.1.mlp.fc1.weight", \
        "clip.vision_model.encoder.layers.0.mlp.fc1.weight"
    moved = []
    images = prepared.images

    def spy(m, indices, **kw):  # sees the weights as the meta-test's adaptation left them
        moved.append((not torch.equal(params[top], trained[top]),
                      not torch.equal(params[bottom], trained[bottom])))
        return images(m, indices, **kw)

    prepared.images = spy
    tasks = evaluation_tasks(dataset, config, "test", 2)
    meta_test(model, prepared, tasks, "classical", config, 2, progress=False)
    assert any(t for t, _ in moved)  # test-time adaptation trains the top ...
    assert not any(b for _, b in moved)  # ... and never the frozen part
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())  # restored


@pytest.mark.parametrize("overrides, message", [
    ({"train.unfreeze_image_blocks": -1}, "train.unfreeze_image_blocks must be an integer >= 0 "
                                          "or all, got -1"),
    ({"train.unfreeze_text_layers": "most"}, "train.unfreeze_text_layers must be an integer >= 0 "
                                             "or all, got 'most'"),
    ({"train.unfreeze_image_blocks": 1.5}, "train.unfreeze_image_blocks must be an integer"),
    ({"train.unfreeze_image_blocks": 1, "train.augment": True}, "train.augment=true cannot go "
                                                                "with train.unfreeze_image_blocks=1"),
    ({"train.unfreeze_image_blocks": 2, "train.augment": False, "metatest.augment": True},
     "metatest.augment=true cannot go with train.unfreeze_image_blocks=2"),
    ({"train.unfreeze_image_blocks": "all", "train.freeze_image_backbone": True},
     "train.freeze_image_backbone=true contradicts train.unfreeze_image_blocks=all"),
    ({"train.unfreeze_text_layers": 1, "train.freeze_text_tower": True},
     "train.freeze_text_tower=true contradicts train.unfreeze_text_layers=1"),
    ({"train.unfreeze_text_layers": 0, "train.heads": "random"}, "train.heads=random cannot go"),
])
def test_bad_values_are_refused_in_one_line(overrides, message):
    with pytest.raises(MamfError, match=re.escape(message)):
        build_config(overrides=overrides)


def test_good_values_resolve(colour_folder):
    from mamf.catalogue import unfrozen

    def resolved(**kw):
        return unfrozen(build_config(overrides={f"train.{k}": v for k, v in kw.items()}).train)

    assert resolved() == (None, None)
    assert resolved(freeze_image_backbone=True, freeze_text_tower=True) == (0, 0)
    assert resolved(unfreeze_image_blocks="2", unfreeze_text_layers="all", augment="false") == \
        (2, None)
    assert resolved(unfreeze_image_blocks=0, freeze_image_backbone=True) == (0, None)


@pytest.mark.parametrize("key, value, message", [
    ("unfreeze_image_blocks", 3, "train.unfreeze_image_blocks=3 is more than the 2 blocks of "
                                 "HFClip's image tower"),
    ("unfreeze_text_layers", 7, "train.unfreeze_text_layers=7 is more than the 2 layers of "
                                "HFClip's text tower"),
])
def test_more_blocks_than_the_tower_has_is_one_line(colour_folder, tmp_path, capsys, key, value,
                                                    message):
    code = main(["train", "--model", "tiny-random-clip", "--data", str(colour_folder), "--out",
                 str(tmp_path / "run"), "--steps", "2", "--quiet", "--set",
                 "train.augment=false", "--set", f"train.{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error" in line] == [f"mamf: error: {message}"]


def test_k_zero_and_all_are_the_old_keys_bit_for_bit(colour_folder, cache):
    def weights(**keys):
        config = build_config(overrides={
            "model": "tiny-random-clip", "data.root": str(colour_folder), "data.ways": 3,
            "train.method": "mamf", "train.steps": 4, "train.lr": 1e-3,
            "train.batch_size": 8, **{f"train.{k}": v for k, v in keys.items()}})
        model, dataset, prepared = prepare(config, fresh=True)
        losses = train(model, prepared, dataset, config, progress=False).losses
        return losses, [p.detach().clone() for p in model.parameters()]

    for new, old in [({"unfreeze_image_blocks": 0, "unfreeze_text_layers": 0},
                      {"freeze_image_backbone": True, "freeze_text_tower": True}),
                     ({"unfreeze_image_blocks": "all", "unfreeze_text_layers": "all"}, {})]:
        (a, wa), (b, wb) = weights(**new), weights(**old)
        assert a == b
        assert all(torch.equal(x, y) for x, y in zip(wa, wb))


@pytest.mark.slow
def test_effnet_minilm_boundary_comes_from_onnxruntime(tmp_path, cache):
    from conftest import make_folder

    model = load_model("effnet-minilm").eval()
    folder = make_folder(tmp_path / "photos", n_classes=3, per_class=3, size=64)
    ours = inputs(model, folder, image_top_blocks=2)
    assert len(list(cache.rglob("EffnetMiniLM-below2-*.onnx"))) == 1
    assert ours.features.shape == (9, 192, 7, 7)
    with torch.no_grad():
        eager = model.image_bottom(model.preprocess(ours.dataset.batch(range(9))), 2)
    assert torch.allclose(ours.features, eager, rtol=0, atol=1e-4)


def test_an_experiment_method_cannot_change_the_boundary():
    """The caches of a dataset are built once for all of its methods."""
    from mamf.runs.experiment import parse_experiment

    raw = {"model": "tiny-random-clip", "datasets": {"a": {"root": "x"}},
           "method_settings": {"classical": {"train": {"unfreeze_image_blocks": 1}}}}
    with pytest.raises(MamfError, match="unfreeze_image_blocks"):
        parse_experiment(raw)


def test_a_trained_run_is_evaluated_over_the_boundary_it_trained_on(colour_folder, tmp_path,
                                                                    cache):
    """The trained top does not name the cache: evaluating the run reads the training's file."""
    run = tmp_path / "run"
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(colour_folder), "--out", str(run), "--steps", "4", "--lr", "1e-2",
                 "--quiet", "--set", "train.augment=false", "--set",
                 "train.unfreeze_image_blocks=1"]) == 0
    files = sorted(colour_folder.parent.rglob("features-*.npz"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out",
                 str(tmp_path / "results"), "--ways", "2", "--quiet", "--set",
                 "metatest.epochs=1"]) == 0
    assert sorted(colour_folder.parent.rglob("features-*.npz")) == files
    assert files[0].stat().st_mtime_ns == stamp


def test_siglip_split_forward_equals_the_full_forward():
    model = load_model("tiny-random-siglip").eval()
    pixels = torch.randn(3, 3, model.image_size, model.image_size,
                         generator=torch.Generator().manual_seed(0))
    errors = split_errors(model, pixels, TEXTS)
    assert set(errors) == {("image", k) for k in range(3)} | {("text", k) for k in range(3)}
    assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_siglip_cached_boundaries_give_the_end_to_end_embeddings(colour_folder, cache,
                                                                 monkeypatch, engine):
    if engine == "torch":
        monkeypatch.setenv(frozen_engine.ENV, "torch")
    model = load_model("tiny-random-siglip").eval()
    whole = inputs(model, colour_folder)
    split = inputs(model, colour_folder, image_top_blocks=1, text_top_layers=1, feature_batch=16)
    assert split.features.shape == (60, 16, 64)  # [images, patches, width]: SigLIP has no CLS
    idx, classes = np.array([0, 13, 59, 7]), np.array([4, 0, 2])
    with torch.no_grad():
        assert torch.allclose(split.images(model, idx), whole.images(model, idx), atol=1e-4)
        assert torch.allclose(split.texts(model, classes), whole.texts(model, classes), atol=1e-5)


def test_siglip_training_the_last_block_trains_the_top_and_its_pooling_heads(colour_folder,
                                                                             cache):
    config = build_config(overrides={
        "model": "tiny-random-siglip", "data.root": str(colour_folder), "data.ways": 3,
        "train.method": "classical", "train.steps": 4, "train.lr": 1e-2, "train.batch_size": 8,
        "train.augment": False, "train.unfreeze_image_blocks": 1,
        "train.unfreeze_text_layers": 1, "data.tasks": 2})
    model, dataset, prepared = prepare(config, fresh=True)
    names = trainable_names(model)
    assert {n for n in names if ".layers.0." in n or "embeddings" in n} == set()
    assert any("vision_model.head." in n for n in names)  # the attention-pooling head
    assert {"siglip.text_model.head.weight", "siglip.vision_model.post_layernorm.weight"} <= names
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, prepared, dataset, config, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= names
    assert any("vision_model.encoder.layers.1." in n for n in changed)
    assert any("text_model.encoder.layers.1." in n for n in changed)
