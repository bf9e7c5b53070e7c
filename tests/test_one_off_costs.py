"""What a run pays once before its first row (the demo's minute): images decoded on every core,
the model loaded while the datasets are built, frozen features computed only for the images the
grid reads. None of it may change a number."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import yaml
from conftest import make_folder

from mamf import protocols
from mamf.config import build_config
from mamf.data.cache import load_or_build
from mamf.data.dataset import ImageDataset
from mamf.features.inputs import ModelInputs
from mamf.models import effnet_minilm, load_model, registry
from mamf.runs.experiment import load_experiment, run_experiment
from mamf.runs.prepare import images_read

FROZEN = {"freeze_image_backbone": True, "freeze_text_tower": True, "augment": False}


def test_decoding_on_several_threads_gives_the_same_pixels_and_the_same_unreadable_files(
        tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "colours", n_classes=3, per_class=7)
    files = sorted(folder.rglob("*.png"))
    (folder / "red" / "img_002.png").write_bytes(b"not a png")
    one, ok_one = load_or_build(files, 20, name="one", progress=False, workers=1)
    monkeypatch.setattr("mamf.data.cache.WINDOW", 4)  # several windows, the last one short
    two, ok_two = load_or_build(files, 20, name="two", progress=False, workers=3)
    assert np.array_equal(np.asarray(one), np.asarray(two))
    assert ok_one.tolist() == ok_two.tolist() and ok_one.sum() == len(files) - 1


def test_prefetch_builds_a_kept_model_in_the_background_and_leaves_errors_to_the_load(
        monkeypatch):
    monkeypatch.setattr(registry, "_BUILTIN", dict(registry._BUILTIN))
    monkeypatch.setattr(registry, "_WARM", dict(registry._WARM))
    monkeypatch.setattr(registry, "DECLARED", dict(registry.DECLARED))
    built = []
    registry.register_builtin("kept-toy", "a test's model",
                              warm=lambda: built.append(threading.current_thread().name))(
        lambda: "the model")
    registry.register_builtin("broken-toy", "a test's model",
                              warm=lambda: 1 / 0)(lambda: "the model")
    registry.register_builtin("plain-toy", "a test's model")(lambda: "the model")
    registry.prefetch("kept-toy").join()
    assert built == ["mamf-prefetch-kept-toy"]
    registry.prefetch("broken-toy").join()  # dropped here; the load reports its own error
    assert registry.prefetch("plain-toy") is None


def test_effnet_minilm_is_built_once_when_warmed_and_loaded_at_the_same_time(monkeypatch):
    """`warm` in a thread and `build` in another: one `_build`, every caller a copy of it."""
    class Built:
        tokenizer = object()

    calls, entered, release = [], threading.Event(), threading.Event()

    def slow_build():
        calls.append(1)
        entered.set()
        release.wait(5)
        return Built()

    monkeypatch.setattr(effnet_minilm, "_PRETRAINED", None)
    monkeypatch.setattr(effnet_minilm, "_build", slow_build)
    warming = threading.Thread(target=effnet_minilm.warm)
    warming.start()
    entered.wait(5)
    got = []
    loading = threading.Thread(target=lambda: got.append(effnet_minilm.build()))
    loading.start()
    release.set()
    warming.join(5)
    loading.join(5)
    assert calls == [1]
    assert isinstance(got[0], Built) and got[0] is not effnet_minilm._PRETRAINED


@pytest.mark.parametrize("method,extra,splits", [
    ("zeroshot", {}, {"test"}),
    ("classical", {}, {"train", "test"}),
    ("classical", {"train.eval_every": 5}, {"train", "dev", "test"}),
    ("tip-adapter", {}, {"dev", "test"}),
])
def test_images_read_are_the_splits_a_method_touches(tmp_path, method, extra, splits):
    folder = make_folder(tmp_path / "colours", n_classes=10, per_class=4)
    config = build_config(overrides={"data.protocol": "episodic", "data.root": str(folder),
                                     "seed": 3, **extra})
    dataset = ImageDataset.load(folder, 16)
    protocol = protocols.get("episodic")
    expected = np.unique(np.concatenate([
        protocol.pool(dataset, config.data, s, 3).all_images()[0] for s in splits]))
    assert images_read(dataset, config, method, {"test"}).tolist() == expected.tolist()


def test_an_experiment_computes_no_features_of_a_split_it_never_reads(tmp_path, monkeypatch):
    """The demo's case: dev is never scored, so its images never go through the frozen tower;
    the rows are those of a run whose features were all computed beforehand."""
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache"))
    folder = make_folder(tmp_path / "colours", n_classes=10, per_class=4)
    raw = {"name": "frozen", "model": "tiny-random-clip", "methods": ["zeroshot", "classical"],
           "seeds": [1],
           "settings": {"train": {**FROZEN, "lr": 1e-3, "epochs": 1},
                        "metatest": {"epochs": 1, "lr": 1e-3},
                        "data": {"protocol": "episodic", "shots": 1, "queries": 1, "tasks": 4}},
           "datasets": {"colours": {"root": str(folder), "ways": [2]}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    rows = run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    (features,) = (tmp_path / "cache").rglob("features-*.npz")
    with np.load(features) as stored:
        held = stored["have"]
    model = load_model("tiny-random-clip").eval()
    dataset = ImageDataset.load(folder, model.image_size)
    config = build_config(overrides={"data.protocol": "episodic", "data.root": str(folder),
                                     "seed": 1})
    pool = protocols.get("episodic").pool
    dev = pool(dataset, config.data, "dev", 1).all_images()[0]
    read = np.concatenate([pool(dataset, config.data, s, 1).all_images()[0]
                           for s in ("train", "test")])
    assert len(dev) and not held[dev].any() and held[read].all()
    features.unlink()  # every image computed beforehand (no `reads`): the same rows
    ModelInputs(model, dataset, torch.device("cpu"), freeze_image_backbone=True)
    again = run_experiment(load_experiment(path), tmp_path / "again", progress=False)
    assert [r.task_accs for r in again] == [r.task_accs for r in rows]


def test_a_split_that_cannot_be_formed_is_still_reported_by_its_rows(tmp_path, monkeypatch):
    """Declaring the images read must not move a protocol's error from the rows that read the
    split to the whole dataset: the rows fail one by one, as before."""
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "cache"))
    folder = make_folder(tmp_path / "colours", n_classes=4, per_class=5)  # < 8 a class
    raw = {"name": "short", "model": "tiny-random-clip", "methods": ["zeroshot", "classical"],
           "seeds": [1], "settings": {"train": {**FROZEN, "epochs": 1},
                                      "metatest": {"epochs": 1}, "data": {"protocol": "paper"}},
           "datasets": {"colours": {"root": str(folder), "ways": [2]}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_experiment(load_experiment(path), tmp_path / "out", progress=False)
    failures = [yaml.safe_load(x) for x in (tmp_path / "out" / "failures.jsonl").read_text()
                .splitlines()]
    assert [f["method"] for f in failures] == ["zeroshot", "classical"]
    assert all("needs at least 8 per class" in f["error"] for f in failures)
