"""Subnormal floats are flushed while mamf trains and adapts, and onnxruntime cannot undo it."""

from __future__ import annotations

import pytest
import torch
from conftest import make_folder

from mamf.config import build_config
from mamf.engine.metatest import evaluation_tasks, meta_test
from mamf.engine.training import train
from mamf.runs.prepare import prepare
from mamf.system import denormals
from mamf.system.errors import MamfError

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True, "train.augment": False, "train.lr": 1e-3,
          "train.steps": 3, "train.batch_size": 8, "metatest.epochs": 1}


def test_flushed_flushes_inside_and_restores_outside(monkeypatch):
    monkeypatch.delenv(denormals.ENV, raising=False)
    assert not denormals.flushing()  # PyTorch's default: IEEE subnormals
    with denormals.flushed():
        assert denormals.flushing()
        assert (torch.tensor([1e-39]) * 1.0).item() == 0.0
    assert not denormals.flushing()
    with pytest.raises(ValueError), denormals.flushed():
        raise ValueError("a failing step")
    assert not denormals.flushing()  # restored on the way out of an error too


def test_keep_leaves_subnormals_and_a_bad_value_is_one_error(monkeypatch):
    monkeypatch.setenv(denormals.ENV, "keep")
    with denormals.flushed():
        assert not denormals.flushing()
        assert (torch.tensor([1e-39]) * 1.0).item() > 0.0
    monkeypatch.setenv(denormals.ENV, "zero")
    with pytest.raises(MamfError, match="MAMF_DENORMALS='zero': expected one of flush, keep"):
        denormals.mode()


def test_an_onnxruntime_session_keeps_the_threads_mode():
    """onnxruntime clears flush-to-zero on the thread that creates a session (1.32 does): a
    frozen tower built inside a training would otherwise slow the rest of it."""
    pytest.importorskip("onnxruntime")
    from mamf.features.frozen_engine import _export, _session

    graph = _export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), {"x": {0: "batch"}})
    with denormals.flushed():
        _session(graph)
        assert denormals.flushing()
    _session(graph)
    assert not denormals.flushing()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("denormals") / "data", n_classes=6, per_class=10)


def modes_seen_by_the_image_head(model) -> list[bool]:
    """Whether subnormals were being flushed at each call of the model's image head (what
    trains with frozen towers, on their cached outputs)."""
    seen: list[bool] = []
    head = model.image_head

    def spy(features):
        seen.append(denormals.flushing())
        return head(features)

    model.image_head = spy
    return seen


@pytest.mark.parametrize("method", ["classical", "mamf"])
def test_training_and_meta_test_run_flushed_and_leave_the_thread_as_it_was(folder, method):
    config = build_config(overrides={**FROZEN, "data.root": str(folder), "train.method": method})
    model, dataset, inputs = prepare(config)
    seen = modes_seen_by_the_image_head(model)
    train(model, inputs, dataset, config, progress=False)
    assert seen and all(seen)
    assert not denormals.flushing()
    seen.clear()
    tasks = evaluation_tasks(dataset, config, "test", 2)[:2]
    meta_test(model, inputs, tasks, "classical", config, 2, progress=False)
    assert seen and all(seen)
    assert not denormals.flushing()
