"""Inputs that made a number silently wrong on the newer surfaces (issue 42): each now gives the
right result or one clear error line."""

from __future__ import annotations

import json
import os
import unicodedata

import numpy as np
import pytest
from conftest import evaluate, make_folder, one_error_line
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mamf.cli import main
from mamf.models.registry import load_model
from mamf.system.errors import MamfError

# -- 3. classes that share one prompt -------------------------------------------------------

def test_a_label_to_text_giving_two_classes_one_prompt_is_refused(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=3)
    (folder / "label_to_text.json").write_text(json.dumps(
        {"red": "a photo of a colour.", "green": "a photo of a colour.", "blue": "blue"}))
    assert evaluate(folder, tmp_path / "o") == 2
    line = one_error_line(capsys)
    assert "'green' and 'red' the same prompt 'a photo of a colour.'" in line


def test_prompts_the_tokenizer_makes_one_are_refused(tmp_path, capsys):
    """The tiny model's byte tokenizer keeps 46 bytes: two prompts that differ only after
    them are one token sequence."""
    folder = make_folder(tmp_path / "d", n_classes=3)
    long = "a photo of something that is coloured, as we see here: "
    (folder / "label_to_text.json").write_text(json.dumps(
        {"red": long + "red", "green": long + "green", "blue": "blue"}))
    assert evaluate(folder, tmp_path / "o") == 2
    line = one_error_line(capsys)
    assert "this model's tokenizer gives the classes 'green' and 'red' one tokenised prompt" \
        in line
    assert not (tmp_path / "o" / "results.jsonl").exists()


def normalising_clip_folder(path):
    """A tiny CLIP folder whose tokenizer normalises to NFC first, as CLIP's own does."""
    from test_models import save_clip_folder
    from tokenizers import Tokenizer, normalizers

    save_clip_folder(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    vocab = tok.get_vocab()
    vocab[unicodedata.normalize("NFC", "café")] = len(vocab)
    from tokenizers import models

    tok.model = models.WordLevel(vocab, unk_token="<unk>")
    tok.normalizer = normalizers.NFC()
    tok.save(str(path / "tokenizer.json"))
    return path


def test_nfc_and_nfd_spellings_of_one_name_are_refused(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=2)
    (folder / "red").rename(folder / unicodedata.normalize("NFC", "café"))
    (folder / "green").rename(folder / unicodedata.normalize("NFD", "café"))
    clip = normalising_clip_folder(tmp_path / "clip")
    assert main(["evaluate", "--model", str(clip), "--data", str(folder), "--out",
                 str(tmp_path / "o"), "--ways", "2", "--quiet"]) == 2
    assert "one tokenised prompt" in one_error_line(capsys)


# -- 4. a CoOp context that leaves no room for the class names --------------------------------

@pytest.mark.parametrize("settings", [["baseline.coop_init=", "baseline.coop_context=60"],
                                      ["baseline.coop_init=" + " ".join(["word"] * 60)]])
def test_a_context_that_cuts_the_class_names_off_is_refused(tmp_path, capsys, settings):
    folder = make_folder(tmp_path / "d", n_classes=3)
    sets = [x for s in settings for x in ("--set", s)]
    code = main(["train", "--method", "coop", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet", *sets])
    assert code == 2
    line = one_error_line(capsys)
    assert "leaves no room for the class names" in line


def test_a_huge_context_is_refused_before_anything_is_allocated(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=3)
    code = main(["train", "--method", "coop", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet",
                 "--set", "baseline.coop_init=", "--set", "baseline.coop_context=100000000"])
    assert code == 2 and "baseline.coop_context" in one_error_line(capsys)


def test_a_context_that_fits_still_trains():
    from mamf.methods.coop import Prompts

    model = load_model("tiny-random-clip")
    assert Prompts(model, ["red", "green"], " ".join(["X"] * 19)).length == 37  # 44 bytes
    with pytest.raises(MamfError, match="no room"):
        Prompts(model, ["red", "green"], " ".join(["X"] * 22))


# -- 5. settings given per method or per grid point: the value used is the value asked ---------

_FOLDER: dict = {}


def _folder(tmp_path_factory):
    if "f" not in _FOLDER:
        _FOLDER["f"] = make_folder(tmp_path_factory.mktemp("asked") / "colours", n_classes=4,
                                   per_class=8)
    return _FOLDER["f"]


@pytest.fixture
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _record_training(monkeypatch) -> list[tuple]:
    """(method, crop scale of every augmented batch, lr, batch size) of each training."""
    import mamf.engine.training
    import mamf.features.inputs
    import mamf.runs.experiment

    used: list[tuple] = []
    crops: list[float] = []
    real_crop, real_train = mamf.features.inputs.random_crop_flip, mamf.engine.training.train

    def crop(pixels, rows, crop_scale=0.8):
        crops.append(crop_scale)
        return real_crop(pixels, rows, crop_scale)

    def train(model, inputs, dataset, config, *args, **kwargs):
        crops.clear()
        result = real_train(model, inputs, dataset, config, *args, **kwargs)
        used.append((config.train.method, sorted(set(crops)), config.train.lr,
                     config.train.batch_size))
        return result

    monkeypatch.setattr(mamf.features.inputs, "random_crop_flip", crop)
    monkeypatch.setattr(mamf.runs.experiment, "train", train)
    monkeypatch.setattr(mamf.engine.training, "train", train)
    return used


def _experiment(folder, **extra) -> dict:
    return {"name": "asked", "model": "tiny-random-clip", "methods": ["classical", "mamf"],
            "seeds": [1], "settings": {"train": {"freeze_image_backbone": False,
                                                 "freeze_text_tower": True, "augment": True,
                                                 "steps": 1, "batch_size": 8},
                                       "metatest": {"epochs": 1}},
            "datasets": {"colours": {"root": str(folder), "ways": [2]}}, **extra}


_TRAIN = st.fixed_dictionaries({"crop_scale": st.sampled_from([0.1, 0.35, 0.6, 1.0]),
                                "lr": st.sampled_from([1e-4, 3e-3, 0.05]),
                                "batch_size": st.sampled_from([4, 6, 8])})


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.generate])
@given(st.fixed_dictionaries({"classical": _TRAIN, "mamf": _TRAIN}))
def test_settings_given_per_method_are_the_settings_used(tmp_path_factory, monkeypatch_module,
                                                         asked):
    from mamf.runs.experiment import parse_experiment, run_experiment

    folder = _folder(tmp_path_factory)
    used = _record_training(monkeypatch_module)
    exp = parse_experiment(_experiment(folder, method_settings={
        m: {"train": dict(v)} for m, v in asked.items()}))
    run_experiment(exp, tmp_path_factory.mktemp("out"), progress=False)
    assert sorted(m for m, *_ in used) == ["classical", "mamf"]
    for method, crops, lr, batch in used:
        want = asked[method]
        assert (lr, batch) == (want["lr"], want["batch_size"])
        assert crops == [want["crop_scale"]]
    monkeypatch_module.undo()


def test_settings_given_per_grid_point_are_the_settings_used(tmp_path, monkeypatch):
    from mamf.runs.tune import tune_experiment

    folder = make_folder(tmp_path / "colours", n_classes=4, per_class=8)
    used = _record_training(monkeypatch)
    from mamf.runs.experiment import parse_experiment

    grid = {"train.crop_scale": [0.9, 0.3], "train.lr": [1e-3, 2e-2], "metatest.lr": [1e-3]}
    exp = parse_experiment(_experiment(folder, methods=["classical"],
                                       tune={"seed": 0, "grid": grid,
                                             "asymmetric": "a test of per-point settings"}))
    tune_experiment(exp, tmp_path / "out")
    points = [(crops, lr) for _, crops, lr, _ in used]
    assert sorted(points) == sorted(([c], lr) for c in grid["train.crop_scale"]
                                    for lr in grid["train.lr"])


# -- 6. a diverging test-time fit ---------------------------------------------------------------

@pytest.mark.parametrize("method,sets", [
    ("clap", ["baseline.clap_lr=1e30"]),  # (ZS-LP, CLAP unconstrained, stays finite at 1e30)
    ("taskres", ["baseline.taskres_lr=1e30", "baseline.taskres_scale=1e10"]),
    ("prolip", ["baseline.prolip_lr=1e30"]), ("tip-adapter-f", ["baseline.tip_f_lr=1e30"])])
def test_a_diverging_test_time_fit_is_an_error_not_an_accuracy(tmp_path, capsys, method, sets):
    folder = make_folder(tmp_path / "d", n_classes=4)
    code = main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(tmp_path / "o"), "--ways", "2", "--quiet", "--method", method,
                 *[x for s in sets for x in ("--set", s)]])
    assert code == 2
    assert "test-time fit diverged" in one_error_line(capsys)
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_fine_tuned_model_that_diverged_is_an_error_not_an_accuracy(tmp_path):
    import torch

    from mamf.config import build_config
    from mamf.engine.metatest import evaluation_tasks
    from mamf.methods.base import predict
    from mamf.runs.prepare import prepare
    from mamf.system.errors import Diverged

    folder = make_folder(tmp_path / "d", n_classes=4)
    config = build_config({"model": "tiny-random-clip", "data": {"root": str(folder), "ways": 2}})
    model, dataset, inputs = prepare(config)
    task = evaluation_tasks(dataset, config, "test", 2)[0]
    assert len(predict(model, inputs, task)) == len(task.query)
    with torch.no_grad():
        model.log_logit_scale.fill_(float("nan"))
    with pytest.raises(Diverged, match="test-time fit diverged"):
        predict(model, inputs, task)


@pytest.mark.parametrize("key,value,message", [
    ("baseline.gda_alphas", [0.1, -1.0], "gda_alphas (each value) must not be negative"),
    ("baseline.ape_weights", [], "ape_weights must hold exactly 2 values"),
    ("baseline.ape_weights", [0.5], "ape_weights must hold exactly 2 values"),
    ("baseline.ape_weights", [0.5, 0.5, 1.0], "ape_weights must hold exactly 2 values")])
def test_method_settings_out_of_their_domain_are_refused(key, value, message):
    """A negative GDA weight turns the discriminant around (every score 0.000); APE's criterion
    reads exactly two weights (one or none was an IndexError)."""
    from mamf.config import build_config

    with pytest.raises(MamfError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(overrides={key: value})


# -- 7. the report shows what was measured --------------------------------------------------------

def test_a_trained_runs_training_settings_cannot_change_at_evaluation(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=4)
    run = tmp_path / "run"
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(run), "--steps", "1", "--lr", "0.001", "--quiet",
                 "--set", "train.freeze_image_backbone=true"]) == 0
    out = tmp_path / "o"
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--quiet", "--ways", "2",
                 "--set", "train.lr=0.5"]) == 2
    line = one_error_line(capsys)
    assert "train.lr cannot change at evaluation" in line and "0.001" in line
    assert not (out / "results.jsonl").exists()
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--quiet", "--ways", "2",
                 "--set", "metatest.lr=0.5"]) == 0  # test-time settings are the evaluation's


def test_a_chosen_cell_pools_one_protocols_rows_only(tmp_path):
    from mamf.report.predictions import predictions_section
    from mamf.results import read_rows

    folder = make_folder(tmp_path / "d", n_classes=12, per_class=10)
    out = tmp_path / "o"
    for protocol in ("paper", "episodic"):
        assert evaluate(folder, out, "--protocol", protocol, "--tasks", "3", "--shots", "1",
                        "--queries", "4", "--set", "metatest.save_predictions=true") == 0
    rows = read_rows(out / "results.jsonl")
    assert sorted(r.protocol for r in rows) == ["episodic", "paper"]
    lines, _, _ = predictions_section(rows, tmp_path / "figures", ("d", "zeroshot", 2))
    text = "\n".join(lines)
    first = rows[0]
    assert f"the {first.n_tasks} test tasks of seed" in text
    assert "1 other row(s)" in text


# -- 8. a builder's dataset rebuilt in place with other options ---------------------------------

def test_a_builders_dataset_is_never_rebuilt_in_place_with_other_options(tmp_path):
    from mamf.data.builders.spurious import build_spurious

    out = tmp_path / "spurious"
    build_spurious(out, log=lambda _: None, rho=0.9, per_class=10, size=16)
    before = sorted((p.name, p.read_bytes()) for p in out.rglob("*.png"))
    with pytest.raises(MamfError, match="built with rho=0.9: building it with other options"):
        build_spurious(out, log=lambda _: None, rho=0.1, per_class=10, size=16)
    assert sorted((p.name, p.read_bytes()) for p in out.rglob("*.png")) == before
    build_spurious(out, log=lambda _: None, rho=0.9, per_class=10, size=16)  # the same: kept


# -- 9. the rest ----------------------------------------------------------------------------------

def test_an_image_rewritten_with_its_old_size_and_mtime_is_decoded_again(tmp_path):
    """BMP files of one shape have one size; the old modification time is put back."""
    import os

    import numpy as np
    from PIL import Image

    from mamf.data.dataset import ImageDataset

    folder = tmp_path / "d"
    for name, value in (("a", 40), ("b", 200)):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), value + i, np.uint8)).save(
                folder / name / f"{i}.bmp")
    first = ImageDataset.load(folder, 8)
    assert int(first.images[0].mean()) == 40
    path = folder / "a" / "0.bmp"
    st = path.stat()
    Image.fromarray(np.full((8, 8, 3), 123, np.uint8)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    again = ImageDataset.load(folder, 8)
    assert int(again.images[0].mean()) == 123


def test_an_all_way_protocol_on_one_class_is_refused_not_a_1_way_row(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=1)
    run = tmp_path / "run"
    assert main(["train", "--method", "coop", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(run), "--steps", "1", "--protocol", "coop",
                 "--shots", "2", "--quiet"]) == 0
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "needs at least 2, the data has 1" in one_error_line(capsys)
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.parametrize("protocol", ["paper", "episodic"])
def test_steps_per_shot_outside_a_shots_protocol_is_refused(protocol):
    """Under paper and episodic data.shots is no training pool's size: k x shots would quietly
    be k x 1 steps."""
    from mamf.api import make_config

    with pytest.raises(MamfError, match=f"steps_per_shot .* under {protocol} set train.steps"):
        make_config("clip-lora", {"data.protocol": protocol})
    with pytest.raises(MamfError, match="needs a protocol that trains on data.shots"):
        make_config({"data": {"protocol": protocol}, "train": {"steps_per_shot": 10}})
    assert make_config("clip-lora", {"data.protocol": "base2novel", "data.shots": 2}) \
        .train.steps_per_shot == 500


def test_an_empty_preset_name_is_refused_not_ignored(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=3)
    assert main(["train", "--preset", "", "--model", "tiny-random-clip", "--data", str(folder),
                 "--out", str(tmp_path / "r"), "--steps", "1", "--quiet"]) == 2
    assert "unknown preset ''" in one_error_line(capsys)
    assert main(["evaluate", "--preset", "", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(tmp_path / "o"), "--quiet", "--ways", "2"]) == 2
    assert "unknown preset ''" in one_error_line(capsys)


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_a_prompt_learner_with_lora_is_refused_before_training(tmp_path, capsys, method):
    """CoOp trains its context alone: LoRA's adapters would be attached, saved untrained, and
    the run could not be evaluated ("does not match the adapters")."""
    folder = make_folder(tmp_path / "d", n_classes=3)
    assert main(["train", "--method", method, "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--quiet",
                 "--set", "train.adapter=lora"]) == 2
    assert "the adapters would never train" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


# -- unbounded: a matched budget of a huge step count -------------------------------------------

def _budget(images: int, batch: int, steps: int):
    from types import SimpleNamespace

    import numpy as np

    from mamf.methods.budget import Budget

    pool = SimpleNamespace(images=[np.arange(images)])
    return Budget(pool, SimpleNamespace(steps=steps, epochs=1.0, batch_size=batch))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60), st.integers(1, 70), st.integers(1, 300), st.floats(0.5, 40))
def test_a_budgets_totals_are_the_sums_over_its_updates(images, batch, steps, per_task):
    import math

    b = _budget(images, batch, steps)
    assert b.total() == sum(b.size(i) for i in range(steps))
    assert b.draws(per_task) == sum(math.ceil(b.size(i) / max(1.0, per_task))
                                    for i in range(steps))


def test_a_budget_of_a_trillion_updates_is_planned_without_walking_them(monkeypatch):
    from mamf.methods.budget import Budget

    b = _budget(50, 8, 10**12)
    calls = []
    real = Budget.size

    def size(self, i):
        calls.append(i)
        assert len(calls) < 100, "the budget walks its updates one by one"
        return real(self, i)

    monkeypatch.setattr(Budget, "size", size)
    assert b.total() == 10**12 // 7 * 50 + 10**12 % 7 * 8
    assert b.draws(3) == 10**12 // 7 * (6 * 3 + 1) + 10**12 % 7 * 3


def test_a_cosine_rate_over_any_step_count():
    from mamf.engine.training import cosine_lr

    assert cosine_lr(1.0, 0, 10**400) == 1.0
    assert cosine_lr(1.0, 10**400, 10**400) == 0.0
    assert cosine_lr(2.0, 5 * 10**399, 10**400) == pytest.approx(1.0)


# -- tracebacks that are now one line ---------------------------------------------------------------

def test_random_heads_on_a_model_without_heads_is_one_line(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=3)
    assert main(["train", "--model", "tiny-random-siglip", "--data", str(folder), "--out",
                 str(tmp_path / "run"), "--steps", "1", "--ways", "2", "--quiet",
                 "--set", "train.heads=random"]) == 2
    assert "train.heads=random cannot go with model tiny-random-siglip" in \
        one_error_line(capsys)


@pytest.mark.parametrize("key", ["train.lr", "train.weight_decay", "metatest.lr",
                                 "baseline.probe_lr", "baseline.probe_weight_decay",
                                 "baseline.prolip_lr", "baseline.taskres_lr", "baseline.tip_f_lr",
                                 "baseline.clap_lr", "baseline.coop_lr", "baseline.cocoop_lr",
                                 "train.inner_lr", "metatest.inner_lr"])
def test_rates_past_float32_are_refused(key):
    from mamf.config import build_config

    with pytest.raises(MamfError, match=f"config {key} must be at most 1e.30, got 1e.308"):
        build_config(overrides={key: 1e308})
    build_config(overrides={key: 1e30})


_GOOD_SCORE = {"train": {"train.lr": 0.001}, "metatest": {"metatest.lr": 0.001}, "ways": [2],
               "dev_acc": 0.5}


@pytest.mark.parametrize("entry", [
    5, {"grid": {}}, {"grid": {}, "scores": [3]},
    {"grid": {}, "scores": [{**_GOOD_SCORE, "train": None}]},
    {"grid": {}, "scores": [{**_GOOD_SCORE, "dev_acc": "high"}]},
    {"grid": {}, "scores": [{k: v for k, v in _GOOD_SCORE.items() if k != "ways"}]}])
def test_a_damaged_tune_file_is_one_line(tmp_path, capsys, entry):
    import yaml

    from mamf.runs.tune import TUNE_FILE

    folder = make_folder(tmp_path / "colours", n_classes=4)
    raw = _experiment(folder, methods=["classical"],
                      tune={"seed": 0, "grid": {"train.lr": [1e-3], "metatest.lr": [1e-3]},
                            "asymmetric": "a test of damaged files"})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    out.mkdir()
    (out / TUNE_FILE).write_text(json.dumps({"seed": 0, "entries": {"colours/classical": entry}}))
    assert main(["tune", str(tmp_path / "exp.yaml"), "--out", str(out), "--quiet"]) == 2
    assert "is damaged (colours/classical" in one_error_line(capsys)


@pytest.mark.parametrize("damage", [
    lambda p: "abc",                                   # not a list
    lambda p: [p[0][:2]] + p[1:],                      # a record of two parts
    lambda p: [[p[0][0], p[0][1], "zz" + p[0][2][2:]]] + p[1:],  # labels past the task
    lambda p: [[[10**6, 0], *p[0][1:]]] + p[1:],       # a class id past the dataset
    lambda p: [[p[0][0], p[0][1], [-1] * len(p[0][2])]] + p[1:],  # negative labels
    lambda p: p[:-1],                                  # a task's record missing
    lambda p: [[p[0][0], p[0][1], "".join("1" if c == "0" else "0" for c in p[0][1])]] + p[1:],
])
def test_damaged_predictions_in_a_results_file_are_left_out_and_said(tmp_path, capsys, damage):
    folder = make_folder(tmp_path / "d", n_classes=4)
    out = tmp_path / "o"
    assert evaluate(folder, out, "--set", "metatest.save_predictions=true", "--tasks", "3") == 0
    row = json.loads((out / "results.jsonl").read_text())
    row["predictions"] = damage(row["predictions"])
    (out / "results.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "1 row(s) hold damaged predictions" in (out / "report.md").read_text()


def test_a_240_character_dataset_name_reports(tmp_path, capsys):
    folder = make_folder(tmp_path / ("n" * 240), n_classes=4)
    out = tmp_path / "o"
    assert evaluate(folder, out, "--set", "metatest.save_predictions=true", "--tasks", "3") == 0
    assert main(["train", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(out / "run"), "--quiet", "--ways", "2", "--steps", "2",
                 "--set", "train.eval_every=1", "--set", "train.freeze_image_backbone=true"]) == 0
    assert main(["evaluate", "--run", str(out / "run"), "--out", str(out), "--quiet",
                 "--ways", "2", "--set", "data.tasks=3"]) == 0
    assert main(["report", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert all(len(p.name.encode()) < 120 for p in (out / "figures").iterdir())


@pytest.mark.parametrize("value", ["abc", "", "-5", "0", "nan", "inf", "1e300"])
def test_a_malformed_dist_timeout_is_one_line(monkeypatch, value):
    from mamf.parallel.distributed import timeout_seconds

    monkeypatch.setenv("MAMF_DIST_TIMEOUT", value)
    with pytest.raises(MamfError, match="MAMF_DIST_TIMEOUT must be seconds"):
        timeout_seconds()
    monkeypatch.setenv("MAMF_DIST_TIMEOUT", "90")
    assert timeout_seconds() == 90.0


def _embedded(support, texts):
    import torch

    from mamf.methods.embedded import Embedded

    return Embedded(support, torch.tensor([0, 0, 1, 1]), support[:2].clone(),
                    torch.tensor([0, 1]), texts, 100.0)


def test_lp_plus_plus_on_zero_embeddings_is_one_line():
    import torch

    from mamf.methods.lp_plus_plus import fit_lpp

    texts = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator()
                                                      .manual_seed(0)), dim=-1)
    with pytest.raises(MamfError, match="lp\\+\\+ sets its step sizes .* all zero"):
        fit_lpp(_embedded(torch.zeros(4, 8), texts), 10, 2, np.random.default_rng(0))
    (weight, _, _), _ = fit_lpp(_embedded(texts.repeat_interleave(2, 0), texts), 10, 2,
                                np.random.default_rng(0))
    assert torch.isfinite(weight).all()


def test_prolip_on_classes_with_no_support_image_is_zero_shot(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=4)
    out = tmp_path / "o"
    for method in ("prolip", "zeroshot"):
        assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                     str(out), "--quiet", "--method", method, "--protocol", "base2novel",
                     "--shots", "2"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    novel = {r["method"]: r["novel_acc"] for r in rows}  # the novel task: no support image
    assert novel["prolip"] == novel["zeroshot"]


@pytest.mark.parametrize("builder,options,message", [
    ("spurious", {"size": 300000}, "size must be an integer of at least 16 and at most 4096"),
    ("spurious", {"per_class": 10**9}, "per_class must be an integer of at least 5 and at most"),
    ("counting", {"size": 10**6}, "size must be an integer of at least 16 and at most 4096"),
    ("digits", {"per_class": 10**7}, "per_class must be an integer of at least 1 and at most")])
def test_a_builders_huge_sizes_are_refused_before_allocating(tmp_path, builder, options, message):
    from mamf.data.builders import BUILDERS

    with pytest.raises(MamfError, match=message):
        BUILDERS[builder](tmp_path / builder, log=lambda _: None, **options)
    assert not (tmp_path / builder).exists()


def test_a_tgz_truncated_inside_an_image_is_one_line(tmp_path, capsys):
    """The metadata first, then the archive ends inside an image (a download cut short): the
    read in the image copy was a tarfile.ReadError traceback."""
    import os

    from test_importers import cub_files, write_tar

    files = cub_files()
    meta = {k: v for k, v in files.items() if "/images/" not in k}
    images = {k: v + os.urandom(40_000) for k, v in files.items() if "/images/" in k}
    full = write_tar(tmp_path / "full.tgz", {**meta, **images}).read_bytes()
    cut = tmp_path / "cut" / "CUB_200_2011.tgz"
    cut.parent.mkdir()
    cut.write_bytes(full[: len(full) // 4])
    assert main(["data", "cub", "--from", str(cut), "--out", str(tmp_path / "cub")]) == 2
    assert "is damaged or truncated (ReadError" in one_error_line(capsys)
    assert not (tmp_path / "cub").exists()


# -- writes outside --out ---------------------------------------------------------------------------

def test_an_empty_cache_dir_is_the_default_not_the_current_folder(monkeypatch, tmp_path):
    from pathlib import Path

    from mamf.data.cache import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAMF_CACHE_DIR", "")
    assert cache_root() == tmp_path / "home" / ".cache" / "mamf" != Path("")
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"


def test_third_party_caches_go_to_mamfs_cache_unless_set(monkeypatch, tmp_path):
    from mamf.data.cache import third_party_caches

    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    third_party_caches()
    assert os.environ["MPLCONFIGDIR"] == str(tmp_path / "c" / "matplotlib")
    assert os.environ["ORT_DISABLE_TELEMETRY"] == "1"
    monkeypatch.setenv("MPLCONFIGDIR", "/somewhere/mine")
    third_party_caches()
    assert os.environ["MPLCONFIGDIR"] == "/somewhere/mine"


@pytest.mark.slow  # fresh processes: onnxruntime and matplotlib write once per process
def test_nothing_is_written_under_the_home_folder(tmp_path):
    import subprocess
    import sys

    folder = make_folder(tmp_path / "d", n_classes=4)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "MAMF_CACHE_DIR": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    for key in ("MPLCONFIGDIR", "ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        env.pop(key, None)
    out = tmp_path / "o"
    for args in (["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                  str(out), "--ways", "2", "--quiet", "--set", "train.freeze_image_backbone=true",
                  "--set", "train.freeze_text_tower=true"], ["report", str(out)]):
        subprocess.run([sys.executable, "-m", "mamf", *args], env=env, check=True,
                       capture_output=True)
    assert list(home.rglob("*")) == []


# -- misleading messages ------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 5, 20, 300])
def test_siglips_chance_loss_is_its_sigmoid_loss_of_a_uniform_guess(k):
    import math

    import torch

    from mamf.engine.chance import at_chance
    from mamf.models.loss import sigmoid_loss

    model = load_model("tiny-random-siglip")
    labels = torch.arange(k) % k
    guess = math.log(1 / (k - 1))  # logit of 1/k: every pair's probability 1/k
    loss = float(sigmoid_loss(torch.full((k, k), guess, dtype=torch.float64), labels))
    assert model.chance_loss(k) == pytest.approx(loss)
    for other in (guess - 0.5, guess + 0.5):  # the best constant guess: no other does better
        assert float(sigmoid_loss(torch.full((k, k), other, dtype=torch.float64), labels)) > loss
    assert load_model("tiny-random-clip").chance_loss(k) == pytest.approx(math.log(k))
    if k == 20:  # the SigLIP run: 3.4 is learning (ln 20 = 3.0 would call it chance)
        assert at_chance([3.4] * 10, 20) is not None
        assert at_chance([3.4] * 10, 20, model.chance_loss) is None


def test_eval_every_on_a_method_that_draws_no_tasks_names_the_setting(tmp_path, capsys):
    folder = make_folder(tmp_path / "d", n_classes=4)
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(folder), "--out", str(tmp_path / "run"), "--steps", "2", "--quiet",
                 "--set", "train.eval_every=1"]) == 2
    assert "train.eval_every scores 5-way dev tasks (data.ways, --ways): ways=5 is more" in \
        one_error_line(capsys)


def test_a_model_folder_in_the_current_folder_loads_by_its_bare_name(tmp_path, monkeypatch):
    from test_models import save_clip_folder

    save_clip_folder(tmp_path / "m_clip")
    monkeypatch.chdir(tmp_path)
    assert load_model("m_clip").image_size == 32
    with pytest.raises(MamfError, match="unknown model 'nothing_here'"):
        load_model("nothing_here")


def test_a_baselines_largest_rate_is_no_traceback(tmp_path, capsys):
    """Adam's first step divides the rate by 0.1: at 1e38 that overflowed float32."""
    folder = make_folder(tmp_path / "d", n_classes=4)
    code = main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(tmp_path / "o"), "--ways", "2", "--quiet", "--method", "zs-probe",
                 "--set", "baseline.probe_lr=1e30"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and (code == 0 or "test-time fit diverged" in err)
