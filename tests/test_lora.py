"""LoRA adapters (train.adapter=lora) and WiSE-FT (metatest.interpolate)."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mamf.catalogue import Config
from mamf.cli import main
from mamf.config import build_config
from mamf.engine.training import train
from mamf.models import adapters
from mamf.models.tiny import build
from mamf.results import Row, read_rows, row_key
from mamf.runs.config_id import config_id
from mamf.runs.prepare import prepare, starting_model
from mamf.runs.run_folder import load_run
from mamf.system.errors import MamfError
from mamf.system.io import read_jsonl


def lora_config(folder, **train) -> Config:
    return build_config({"model": "tiny-random-clip", "data": {"root": str(folder)},
                         "train": {"method": "classical", "adapter": "lora", "lr": 1e-2,
                                   "steps": 8, "batch_size": 8, "checkpoint_every": 0, **train},
                         "metatest": {"lr": 1e-3, "epochs": 1}})


def test_only_adapters_and_the_logit_scale_train_and_the_towers_stay(colour_folder):
    config = lora_config(colour_folder)
    model, dataset, inputs = prepare(config, fresh=True)
    base = {n: p.detach().clone() for n, p in model.named_parameters()
            if "lora_" not in n and n != "log_logit_scale"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"log_logit_scale"} | {n for n in trainable if ".lora_" in n}
    assert {n.split(".")[-4] for n in trainable if ".lora_" in n} == {"q_proj", "k_proj", "v_proj"}
    assert any("text_model" in n for n in trainable) and any("vision_model" in n for n in trainable)
    lora_b = [p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n]
    assert all(torch.count_nonzero(b) == 0 for b in lora_b)  # starts as the model alone
    train(model, inputs, dataset, config, progress=False)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], w) for n, w in base.items())  # towers and heads untouched
    assert any(torch.count_nonzero(p) > 0 for n, p in after.items() if ".lora_B." in n)


def test_random_heads_train_beside_the_adapters(colour_folder):
    model, _, _ = prepare(lora_config(colour_folder, heads="random"), fresh=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"clip.visual_projection.weight", "clip.text_projection.weight"} <= trainable


def test_adapted_model_starts_as_built_and_init_follows_the_seed():
    model, x = build(), torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    before = model.encode_images(model.preprocess(x))
    adapters.attach(model, Config().train.__class__(adapter="lora"), seed=1)
    assert torch.equal(before, model.encode_images(model.preprocess(x)))
    again = build()
    adapters.attach(again, Config().train.__class__(adapter="lora"), seed=1)
    other = build()
    adapters.attach(other, Config().train.__class__(adapter="lora"), seed=2)
    a = {n: p for n, p in model.named_parameters() if ".lora_A." in n}
    assert all(torch.equal(p, dict(again.named_parameters())[n]) for n, p in a.items())
    assert not all(torch.equal(p, dict(other.named_parameters())[n]) for n, p in a.items())


def test_frozen_cached_towers_get_no_adapters_and_explicit_targets_there_are_refused(colour_folder):
    model, _, _ = prepare(lora_config(colour_folder, freeze_image_backbone=True), fresh=True)
    names = [n for n, p in model.named_parameters() if ".lora_" in n]
    assert names and not any("vision_model" in n for n in names)
    with pytest.raises(MamfError, match="frozen tower"):
        prepare(lora_config(colour_folder, freeze_text_tower=True,
                            lora_targets=["text_model.encoder.layers.0.self_attn.q_proj"]),
                fresh=True)
    with pytest.raises(MamfError, match="nothing to adapt"):
        prepare(lora_config(colour_folder, freeze_text_tower=True, freeze_image_backbone=True),
                fresh=True)
    with pytest.raises(MamfError, match="names no linear layer"):
        prepare(lora_config(colour_folder, lora_targets=["no_such_layer"]), fresh=True)


def test_under_partial_unfreezing_adapters_sit_only_above_the_cached_boundary(colour_folder):
    """The tiny model's towers have 2 layers each; with the last 1 unfrozen the boundary cache
    holds layer 0's outputs, so LoRA goes into layer 1 only (and nowhere in a frozen tower)."""
    config = lora_config(colour_folder, augment=False, unfreeze_image_blocks=1,
                         unfreeze_text_layers=0)
    model, dataset, inputs = prepare(config, fresh=True)
    names = [n for n, _ in model.named_parameters() if ".lora_" in n]
    assert names and all("vision_model.encoder.layers.1." in n for n in names)
    before = [p.detach().clone() for n, p in model.named_parameters() if ".lora_B." in n]
    train(model, inputs, dataset, config, progress=False)
    after = [p for n, p in model.named_parameters() if ".lora_B." in n]
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # they train
    with pytest.raises(MamfError, match="frozen tower"):
        prepare(lora_config(colour_folder, augment=False, unfreeze_image_blocks=1,
                            lora_targets=["vision_model.encoder.layers.0.self_attn.q_proj"]),
                fresh=True)


@pytest.mark.parametrize("key, value, message", [
    ("train.adapter", "lorax", "must be one of"),
    ("train.lora_rank", "0", "must be positive"),
    ("train.lora_alpha", "-1", "must be positive"),
    ("train.lora_dropout", "1", "below 1"),
    ("train.lora_targets", "['']", "not empty strings"),
    ("metatest.interpolate", "[0.5, 2]", r"in \[0, 1\]"),
    ("metatest.interpolate", "[0.5, 0.5]", "twice"),
    ("data.train_match", "", "must not be empty"),
])
def test_bad_values_are_one_line(colour_folder, tmp_path, capsys, key, value, message):
    code = main(["train", "--model", "tiny-random-clip", "--data", str(colour_folder), "--out",
                 str(tmp_path / "r"), "--set", f"{key}={value}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("mamf: error:") and "\n" not in err
    assert __import__("re").search(message, err), err


def test_fsdp_is_refused_with_an_adapter():
    with pytest.raises(MamfError, match="fsdp"):
        build_config({"train": {"adapter": "lora", "parallel": "fsdp"}})


def train_args(folder, out, *extra):
    return ["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
            str(folder), "--out", str(out), "--lr", "1e-2", "--steps", "8", "--batch-size", "8",
            "--quiet", "--set", "train.adapter=lora", *extra]


def test_run_keeps_the_adapter_and_evaluate_run_scores_as_the_model_in_memory(colour_folder,
                                                                             tmp_path):
    run = tmp_path / "run"
    assert main(train_args(colour_folder, run)) == 0
    assert not (run / "model.safetensors").exists()
    saved = load_file(str(run / "adapter.safetensors"))
    assert "log_logit_scale" in saved and all(".lora_" in k for k in saved if k != "log_logit_scale")
    # the model trained in memory, the same way, then meta-tested directly
    config, loaded = load_run(run)
    model, dataset, inputs = prepare(config, fresh=True)
    train(model, inputs, dataset, config, progress=False)
    for n, p in loaded.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[n]), n
    from mamf.runs.measure import evaluate

    mem = evaluate(config, tmp_path / "mem", "classical", model, [3], progress=False)
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out",
                 str(tmp_path / "res"), "--ways", "3", "--quiet"]) == 0
    disk = read_jsonl(tmp_path / "res" / "results.jsonl")
    assert disk[0]["task_accs"] == mem[0].task_accs


def test_a_damaged_adapter_file_is_one_line(colour_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(colour_folder, run)) == 0
    (run / "adapter.safetensors").write_bytes(b"not safetensors")
    code = main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out",
                 str(tmp_path / "res"), "--quiet"])
    assert code == 2 and "adapter.safetensors" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [("classical", ()),
                                           ("fomaml", ("--set", "train.inner_lr=0.01")),
                                           ("mamf", ("--set", "train.lora_dropout=0.25"))])
def test_lora_resumes_to_the_same_adapter(shared_colour_folder, tmp_path, method, extra):
    """Stopped after a checkpoint (the checkpoints kept) and run again: the same adapter, bit for
    bit, the run's dropout generator included."""
    args = ["train", "--method", method, "--model", "tiny-random-clip", "--data",
            str(shared_colour_folder), "--ways", "3", "--lr", "1e-2", "--steps", "12",
            "--batch-size", "8", "--quiet", "--set", "train.adapter=lora", "--set",
            "train.checkpoint_every=4", *extra]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*args, "--out", str(whole)]) == 0
    # stop after step 8: run 8 steps with the same settings file, keep its checkpoint
    from mamf.engine.checkpoint import Checkpointer

    config = build_config(yaml.safe_load((whole / "config.yaml").read_text()))
    half = build_config({**yaml.safe_load((whole / "config.yaml").read_text()),
                         "train": {**yaml.safe_load((whole / "config.yaml").read_text())["train"],
                                   "steps": 8}})
    model, dataset, inputs = prepare(half, fresh=True)
    train(model, inputs, dataset, half, progress=False, checkpointer=Checkpointer(
        cut / "checkpoints", 4))
    (cut / "config.yaml").write_text((whole / "config.yaml").read_text())
    assert main([*args, "--out", str(cut)]) == 0
    a, b = load_file(str(whole / "adapter.safetensors")), load_file(str(cut / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert config.train.adapter == "lora"


def test_test_time_adaptation_moves_only_the_adapters_and_is_undone(colour_folder):
    from mamf.engine.metatest import evaluation_tasks, meta_test

    config = lora_config(colour_folder)
    model, dataset, inputs = prepare(config, fresh=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tasks = evaluation_tasks(dataset, config, "test", 3)[:2]
    meta_test(model, inputs, tasks, "classical", config, 3, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# -- WiSE-FT -------------------------------------------------------------------------------------

def test_interpolation_ends_are_zero_shot_and_trained_exactly(colour_folder, tmp_path):
    """alpha = 0 scores what zero-shot scores, alpha = 1 what the trained run scores, task by
    task; rows carry alpha and are keyed by it. Adaptation off, so zero-shot is comparable."""
    for adapter in ("none", "lora"):
        run, res = tmp_path / f"run-{adapter}", tmp_path / f"res-{adapter}"
        common = ["--data", str(colour_folder), "--out", str(res), "--ways", "3", "--quiet",
                  "--set", "metatest.epochs=0"]
        assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                     str(colour_folder), "--out", str(run), "--lr", "1e-2", "--steps", "8",
                     "--quiet", "--set", f"train.adapter={adapter}"]) == 0
        assert main(["evaluate", "--model", "tiny-random-clip", *common]) == 0
        assert main(["evaluate", "--run", str(run), *common]) == 0
        assert main(["evaluate", "--run", str(run), *common,
                     "--set", "metatest.interpolate=[0, 0.5, 1]"]) == 0
        rows = read_rows(res / "results.jsonl")
        by = {(r.method, r.alpha): r.to_json() for r in rows}
        assert set(by) == {("zeroshot", None), ("classical", None), ("classical", 0.0),
                           ("classical", 0.5), ("classical", 1.0)}
        assert len({row_key(r) for r in rows}) == 5
        assert by["classical", 0.0]["task_accs"] == by["zeroshot", None]["task_accs"]
        assert by["classical", 1.0]["task_accs"] == by["classical", None]["task_accs"]
        assert by["classical", 1.0]["task_accs"] != by["zeroshot", None]["task_accs"], adapter
        assert by["classical", 0.5]["config_id"] == by["classical", None]["config_id"]


def test_lora_interpolation_scales_the_adapter_delta(colour_folder):
    from mamf.engine.wiseft import Interpolation, starting_weights

    config = lora_config(colour_folder)
    model, dataset, inputs = prepare(config, fresh=True)
    start = starting_weights(model)
    train(model, inputs, dataset, config, progress=False)
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    mix = Interpolation(model, start)
    with mix.at(0.25):
        now = dict(model.named_parameters())
        for n in start:
            if ".lora_A." in n:
                assert torch.equal(now[n], trained[n])
            elif ".lora_B." in n:
                assert torch.allclose(now[n], 0.25 * trained[n])
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())


def test_interpolation_needs_a_run(colour_folder, tmp_path, capsys):
    model = starting_model(lora_config(colour_folder))
    from mamf.runs.measure import evaluate

    config = lora_config(colour_folder, )
    config.metatest.interpolate = [0.5]
    with pytest.raises(MamfError, match="--run"):
        evaluate(config, tmp_path / "r", "classical", model, [3], progress=False)


def test_old_rows_keep_their_key_and_settings_hash():
    """Rows without alpha read as alpha None; the default settings hash as before the new keys."""
    row = {"dataset": "d", "method": "classical", "model": "m", "protocol": "paper", "ways": 3,
           "shots": 1, "queries": 1, "seed": 1, "split": "test"}
    assert row_key(row) == row_key({**row, "alpha": None}) != row_key({**row, "alpha": 1.0})
    assert config_id(Config()) == "b2bc4d7ef02a"  # the hash main wrote for the defaults


def test_experiment_rows_per_alpha_and_split_resume(colour_folder, tmp_path):
    exp = {"name": "wise", "model": "tiny-random-clip", "methods": ["zeroshot", "classical"],
           "seeds": [1], "splits": ["test", "train"],
           "settings": {"train": {"adapter": "lora", "lr": 1e-2, "steps": 6, "batch_size": 8},
                        "metatest": {"epochs": 0, "interpolate": [0.0, 1.0]}},
           "datasets": {"c": {"root": str(colour_folder), "ways": [3]}}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(exp))
    out = tmp_path / "out"
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    rows = read_rows(out / "results.jsonl")
    got = sorted((r.method, r.split, r.alpha) for r in rows)
    assert got == sorted([("zeroshot", "test", None), ("zeroshot", "train", None),
                          ("classical", "test", 0.0), ("classical", "test", 1.0),
                          ("classical", "train", 0.0), ("classical", "train", 1.0)])
    by = {(r.method, r.split, r.alpha): r for r in rows}
    for split in ("test", "train"):
        assert by["classical", split, 0.0].task_accs == by["zeroshot", split, None].task_accs
    lines = (out / "results.jsonl").read_text().splitlines()
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    assert (out / "results.jsonl").read_text().splitlines() == lines  # nothing run twice
    # a grid that lost its last rows computes exactly them again
    (out / "results.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    assert main(["experiment", str(path), "--out", str(out), "--quiet"]) == 0
    again = read_rows(out / "results.jsonl")
    assert {r.key: r.task_accs for r in again} == {r.key: r.task_accs for r in rows}


def test_report_shows_alpha_curves_and_train_against_test(tmp_path):
    """Rows at several alphas get a figure per dataset; training-split rows a table; the main
    table counts only the unmixed held-out rows."""
    from mamf.report import write_report

    def row(method, split, alpha, acc):
        return Row.from_json({
            "dataset": "d", "method": method, "model": "m", "protocol": "paper", "ways": 2,
            "shots": 1, "queries": 1, "seed": 1, "split": split, "alpha": alpha, "n_tasks": 2,
            "task_accs": [acc, acc], "acc_mean": acc, "acc_ci95": 0.0})

    rows = [row("zeroshot", "test", None, 0.5), row("zeroshot", "train", None, 0.5)]
    for alpha, acc in ((0.0, 0.5), (0.5, 0.75), (1.0, 0.7)):
        rows += [row("classical", "test", alpha, acc), row("classical", "train", alpha, 1.0)]
    paths = write_report(rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "alpha-d" in paths and paths["alpha-d"].is_file()
    assert "## Training-split against test-split tasks" in text
    assert "| d | classical FT | 1.000 (no spread) | 0.700 (no spread) | +0.300 (no spread) | 1 |" \
        in text
    assert "0.700" in text.split("## Accuracy")[1].split("\n\n")[1]  # alpha 1 in the main table
    assert "data:image/png;base64" in (tmp_path / "report.html").read_text()
    plain = write_report([r for r in rows if r.alpha in (None, 1.0) and r.split == "test"],
                         tmp_path / "plain")
    assert not any(k.startswith("alpha-") for k in plain)


@pytest.mark.slow
def test_effnet_minilm_defaults_attach_and_start_as_built():
    pytest.importorskip("efficientnet_lite_pytorch")
    from mamf.catalogue import TrainConfig
    from mamf.models.effnet_minilm import build as build_effnet

    model, x = build_effnet(), torch.randint(0, 255, (2, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        before = model.encode_images(model.preprocess(x))
    adapters.attach(model, TrainConfig(adapter="lora"), seed=1)
    with torch.no_grad():
        assert torch.equal(before, model.encode_images(model.preprocess(x)))
    layers = {n.split(".lora_")[0].split(".")[-1] for n, p in model.named_parameters()
              if p.requires_grad and ".lora_" in n}
    assert layers == {"query", "key", "value", "_fc"}


def test_a_rank_above_the_layers_dimensions_is_refused_before_allocating(colour_folder, tmp_path,
                                                                        capsys):
    code = main(["train", "--model", "tiny-random-clip", "--data", str(colour_folder), "--out",
                 str(tmp_path / "r"), "--set", "train.adapter=lora", "--set",
                 "train.lora_rank=1000000000", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert __import__("re").search(r"train.lora_rank=1000000000 is more than layer \S+ can "
                                   r"take: at most \d+", err), err


def test_two_threads_training_lora_with_dropout_give_the_runs_of_one_after_the_other(
        colour_folder):
    """Dropout's masks come from the run's own generator, not torch's global one, which threads
    share (and which a GPU run's checkpoints would not hold)."""
    import threading

    config = lora_config(colour_folder, lora_dropout=0.5, steps=6)

    def run() -> tuple:
        return prepare(config, fresh=True)

    def trained(prepared) -> dict:
        model, dataset, inputs = prepared
        train(model, inputs, dataset, config, progress=False)
        return {k: v.clone() for k, v in adapters.trained_state(model).items()}

    alone = [trained(run()), trained(run())]
    assert all(torch.equal(alone[0][k], alone[1][k]) for k in alone[0])
    prepared = [run(), run()]
    together: list = [None, None]
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, trained(prepared[i])))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in together:
        assert got.keys() == alone[0].keys()
        assert all(torch.equal(got[k], alone[0][k]) for k in got)
