"""The Python API as a script uses it: the Run `train` returns, models in memory, classify's
prompts and images, and one clear error for a wrong argument."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mamf.system.errors import MamfError


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_folder

    from mamf import train

    root = tmp_path_factory.mktemp("api")
    folder = make_folder(root / "colours", n_classes=4)
    config = {"model": "tiny-random-clip", "data": {"root": str(folder)},
              "train": {"method": "classical", "steps": 3, "lr": 1e-2, "batch_size": 8}}
    return train(config, root / "run", progress=False), folder


def test_train_returns_a_run_with_its_model_config_and_folder(trained):
    from mamf import Run, load_run

    run, _ = trained
    assert isinstance(run, Run) and run.folder.is_dir() and run["steps"] == 3
    assert run.config.train.method == "classical"
    _, model = load_run(run.folder)
    for (k, a), (_, b) in zip(sorted(run.model.state_dict().items()),
                              sorted(model.state_dict().items())):
        assert torch.equal(a, b), k


def test_evaluate_scores_a_run_and_a_model_in_memory(trained, tmp_path):
    from mamf import evaluate

    run, folder = trained
    out = tmp_path / "res"
    settings = {"metatest.epochs": 1, "data.tasks": 3}
    by_run = evaluate(run, out, ways=2, progress=False, overrides=settings)
    by_folder = evaluate(run.folder, tmp_path / "res2", ways=2, progress=False,
                         overrides=settings)
    assert by_run[0].task_accs == by_folder[0].task_accs
    assert by_run[0].run == str(run.folder)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    # a model changed in memory is scored as itself, never as the run or as the pristine model
    zeroshot = evaluate(run.config, out, ways=2, progress=False, overrides={"data.tasks": 3})
    with torch.no_grad():
        run.model.clip.visual_projection.weight.mul_(-1.0)
    changed = evaluate(run.model, out, config=run.config, ways=2, progress=False,
                       overrides={"data.tasks": 3})
    assert changed[0].run.startswith("memory:") and changed[0].run != zeroshot[0].run
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    again = evaluate(run, out, ways=2, progress=False, method="zeroshot",
                     overrides={"data.tasks": 3})  # the changed Run: in memory, not the folder
    assert again[0].run == changed[0].run
    with torch.no_grad():
        run.model.clip.visual_projection.weight.mul_(-1.0)  # as trained again
    assert all(torch.equal(v, before[k]) for k, v in run.model.state_dict().items())


def test_classify_uses_the_runs_prompts(trained, tmp_path):
    """A run's data folder with a label_to_text.json: classify prompts with it, as the run
    trained, unless a template is given."""
    from mamf import classify
    from mamf.api import _class_prompts

    run, folder = trained
    labels = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert _class_prompts(labels, None, run.config) == [[f"A photo of a {x}."] for x in labels]
    (folder / "label_to_text.json").write_text(json.dumps({x: f"pure {x} colour" for x in labels}))
    try:
        assert _class_prompts(labels, None, run.config) == [[f"pure {x} colour"] for x in labels]
        image = [np.full((24, 24, 3), 200, np.uint8)]
        own = classify(run, image, labels)
        told = classify(run, image, labels, template="A photo of a {label}.")
        plain = classify(run.model, image, labels)  # a bare model: the default template
        assert np.allclose(told, plain) and not np.allclose(own, told)
    finally:
        (folder / "label_to_text.json").unlink()
    from mamf.config import build_config, to_dict

    # a run with a template ensemble: each label gets every template's prompt (averaged)
    config = build_config(to_dict(run.config), {"data.templates": ["a {label}", "the {label}"]})
    assert _class_prompts(["red"], None, config) == [["a red", "the red"]]


def test_classify_reads_float_images_in_0_1_and_refuses_values_it_would_wrap(trained):
    from mamf import classify

    run, _ = trained
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    labels = ["red", "green"]
    as_float = classify(run, [uint8.astype(np.float32) / 255], labels)
    assert np.allclose(as_float, classify(run, [uint8], labels), atol=1e-6)
    assert not np.allclose(as_float, classify(run, [np.zeros_like(uint8)], labels), atol=1e-4)
    for bad in (uint8.astype(np.float32), uint8.astype(np.int32) + 200, -np.ones((8, 8, 3))):
        with pytest.raises(MamfError, match="0, 1|0..255") as e:
            classify(run, [bad], labels)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("call", [
    lambda m, run: m.classify(run, "photo.png", ["a", "b"]),
    lambda m, run: m.classify(run, [np.zeros((8, 8, 3), np.uint8)], "ab"),
    lambda m, run: m.classify(run, [np.zeros((8, 8, 3), np.uint8)], ["a", 3]),
    lambda m, run: m.classify(run, [np.zeros((8, 8), np.uint8)[None]], ["a", "b"]),
    lambda m, run: m.classify(run, ["no/such/file.png"], ["a", "b"]),
    lambda m, run: m.classify(42, [np.zeros((8, 8, 3), np.uint8)], ["a", "b"]),
    lambda m, run: m.classify(run, [np.zeros((8, 8, 3), np.uint8)], ["a", "b"], template=3),
    lambda m, run: m.evaluate(run, 5),
    lambda m, run: m.evaluate(3.5, "out"),
    lambda m, run: m.evaluate(run, "out", ways=2.5),
    lambda m, run: m.evaluate(run, "out", method=["zeroshot"]),
    lambda m, run: m.evaluate(run.model, "out"),
    lambda m, run: m.train({"model": "tiny-random-clip"}, None),
    lambda m, run: m.load_run(7),
    lambda m, run: m.report(["results"]),
    lambda m, run: m.make_config(42),
    lambda m, run: m.make_config({}, ["train.lr=1"]),
])
def test_a_wrong_argument_is_one_error_line(trained, call, tmp_path, monkeypatch):
    import mamf

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MamfError) as e:
        call(mamf, trained[0])
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_first_models_built_by_two_threads_at_once(tmp_path):
    """transformers imports its classes lazily; two threads building their first model at once
    got "cannot import name 'CLIPConfig'". Each try is a fresh process."""
    code = ("import threading\n"
            "from mamf.models import load_model\n"
            "errors = []\n"
            "def build():\n"
            "    try:\n"
            "        load_model('tiny-random-clip')\n"
            "    except Exception as e:\n"
            "        errors.append(repr(e))\n"
            "threads = [threading.Thread(target=build) for _ in range(4)]\n"
            "[t.start() for t in threads]\n"
            "[t.join() for t in threads]\n"
            "print(errors)\n")
    src = str(Path(__file__).resolve().parents[1] / "src")
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={"PYTHONPATH": src, "HF_HUB_OFFLINE": "1",
                                   "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                              timeout=300)
        assert done.returncode == 0, done.stderr[-1500:]
        assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_api_docs_example_runs(tmp_path, monkeypatch):
    """docs/api.md's example, unchanged, on 25 generated classes with the tiny model in place of
    the cpu preset's effnet-minilm."""
    import re

    from PIL import Image

    from mamf import api

    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(.*?)```", docs, re.S)
    rng = np.random.default_rng(0)
    for c in range(25):
        folder = tmp_path / "data" / "emoji" / f"class_{c:02d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(4):
            pixels = np.clip(colour + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    preset = api.settings_file
    monkeypatch.setattr(api, "settings_file", lambda path: {**preset(path),
                                                            "model": "tiny-random-clip"})
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code.group(1), "docs/api.md", "exec"), scope)
    assert scope["probs"].shape == (1, 3) and scope["trained"][0].run == "runs/emoji-mamf"
    assert len((tmp_path / "results" / "results.jsonl").read_text().splitlines()) == 2
