"""First contact (issue 26): a quick `--help`, `--version`, an aligned `mamf methods`, one
`--ways` grammar, and the Python API (`from mamf import train, evaluate, ...`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mamf.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": SRC, "PATH": ""},
                          capture_output=True, text=True, check=True).stdout


def test_help_and_import_load_no_torch():
    from mamf.cli import COMMANDS

    commands = [["--help"], *([c, "--help"] for c in COMMANDS)]
    out = _python(
        "import sys, contextlib, io\n"
        "import mamf\n"
        "from mamf.cli import main\n"
        f"for argv in {commands!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'mamf.system.allocator')"
        " if m in sys.modules))\n")
    assert out.strip() == "[]"  # nor is glibc's malloc tuned by `import mamf`


def _options():
    """(command, option action) of every option of every command."""
    import argparse

    from mamf.cli import parser

    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    for command, p in [("mamf", top), *sub.choices.items()]:
        for action in p._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield command, action


def _mentions(text: str, value) -> bool:
    forms = {str(value)}
    if isinstance(value, float):
        forms |= {f"{value:g}", f"{value:g}".replace("e-0", "e-")}
    return "default" in text and any(f in text for f in forms)


def test_every_option_shows_its_default():
    """An option with a default (argparse's, or the config setting it sets) says it in --help."""
    from mamf.cli import COMMON_FLAGS, EVAL_FLAGS, TRAIN_FLAGS
    from mamf.config import build_config, to_dict

    defaults = to_dict(build_config({}))
    flags = {"train": {**COMMON_FLAGS, **TRAIN_FLAGS}, "evaluate": {**COMMON_FLAGS, **EVAL_FLAGS}}
    checked = 0
    for command, action in _options():
        value = action.default
        key = flags.get(command, {}).get(action.dest)
        if value in (None, [], False) and key is not None:
            value = defaults
            for part in key.split("."):
                value = value[part]
        if value in (None, [], False, ""):
            continue
        checked += 1
        assert _mentions(action.help or "", value), (command, action.option_strings, value)
    assert checked > 25


def test_cli_tunes_the_allocator_at_its_entry(monkeypatch, capsys):
    from mamf.system import allocator

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["models"]) == 0
    assert calls == [1]


def test_version_names_the_libraries_and_device(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    for name in ("mamf", "torch", "transformers", "peft", "onnxruntime", "device"):
        assert re.search(rf"^{name} ", out, re.M), name


def test_methods_listing_is_aligned(capsys):
    assert main(["methods"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line and not line.endswith(":")]
    starts = {len(m.group(1)) for line in lines if (m := re.match(r"(\S+\s+)\S", line))}
    assert len(starts) == 1


def test_unknown_method_is_one_error_line(colour_folder, tmp_path, capsys):
    code = main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", str(tmp_path / "e"), "--method", "nope", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mamf: error: unknown method 'nope'")


def test_train_ways_list_trains_one_run_per_size(colour_folder, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--model", "tiny-random-clip", "--data", str(colour_folder), "--out",
                 str(out), "--ways", "2,3", "--steps", "2", "--quiet"]) == 0
    import yaml

    for n in (2, 3):
        config = yaml.safe_load((out / f"ways-{n}" / "config.yaml").read_text())
        assert config["data"]["ways"] == n


def test_api_train_evaluate_report_classify(colour_folder, tmp_path):
    from mamf import Config, classify, evaluate, load_run, make_config, report, train

    config = make_config({"model": "tiny-random-clip", "data": {"root": str(colour_folder)},
                          "train": {"steps": 3, "lr": 1e-3}}, train__batch_size=8)
    assert isinstance(config, Config) and config.train.batch_size == 8
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"model: tiny-random-clip\ndata:\n  root: {colour_folder}\n")
    assert make_config(yaml_file).data.root == str(colour_folder)
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["steps"] == 3
    rows = evaluate(tmp_path / "run", tmp_path / "res", ways=[2, 3], progress=False,
                    overrides={"metatest.epochs": 1, "data.tasks": 4})
    zeroshot = evaluate(config, tmp_path / "res", ways=3, progress=False)
    assert [(r.method, r.ways) for r in rows + zeroshot] == [
        ("mamf", 2), ("mamf", 3), ("zeroshot", 3)]
    lines = (tmp_path / "res" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["method"] == "mamf"
    files = report(tmp_path / "res")
    assert Path(files["md"]).is_file()
    _, model = load_run(tmp_path / "run")
    labels = sorted(p.name for p in Path(colour_folder).iterdir() if p.is_dir())
    images = [next((Path(colour_folder) / labels[0]).iterdir()),
              np.full((30, 40, 3), 200, np.uint8)]
    probs = classify(tmp_path / "run", images, labels)
    assert probs.shape == (2, len(labels))
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(classify(model, images, labels), probs, atol=1e-5)


def test_api_progress_false_prints_no_bar(colour_folder, tmp_path, capsys):
    from mamf import evaluate

    evaluate({"model": "tiny-random-clip", "data": {"root": str(colour_folder), "tasks": 3}},
             tmp_path / "res", ways=2, progress=False)
    assert "%" not in capsys.readouterr().err


def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    """The README's example, unchanged, on 25 generated classes with the tiny model in place of
    the cpu preset's effnet-minilm."""
    from PIL import Image

    from mamf import api

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("### Python API", 1)[1], re.S)
    assert code, "README's Python API section has an example"
    rng = np.random.default_rng(0)
    for c in range(25):
        folder = tmp_path / "data" / "emoji" / f"class_{c:02d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 256, 3)
        for i in range(4):
            pixels = np.clip(colour + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    preset = api.settings_file

    def tiny(path):
        return {**preset(path), "model": "tiny-random-clip"}

    monkeypatch.setattr(api, "settings_file", tiny)
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    assert (tmp_path / "results" / "report.md").is_file()
    assert len((tmp_path / "results" / "results.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("method", ["classical", "mamf", "fomaml"])
def test_a_loss_at_chance_warns_with_its_likely_cause(method, colour_folder, tmp_path, caplog):
    """A rate that moves nothing (1e-12, as near 0 as train.lr may be) leaves the loss at
    ln(classes): the run says so and names the rate and what trains."""
    from mamf import train

    config = {"model": "tiny-random-clip", "data": {"root": str(colour_folder), "ways": 3},
              "train": {"method": method, "steps": 20, "lr": 1e-12, "inner_lr": 0.0,
                        "freeze_image_backbone": True, "freeze_text_tower": True}}
    with caplog.at_level("WARNING", logger="mamf"):
        train(config, tmp_path / "run", progress=False)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"{method}: training loss stayed at chance" in warning
    classes = 3 if method != "classical" else len(
        [p for p in Path(colour_folder).iterdir() if p.is_dir()])
    assert f"ln({classes})" in warning
    assert "train.lr=1e-12 is far too low" in warning and "both towers frozen" in warning
    assert ("train.inner_lr=0" in warning) == (method == "fomaml")


def test_the_likely_cause_names_the_paper_rate_end_to_end():
    from mamf.config import build_config
    from mamf.engine.chance import at_chance, likely_cause

    cause = likely_cause(build_config({}))  # the defaults: both towers end to end at 1e-6
    assert "train.lr=1e-06 (both towers end to end) is the paper's rate" in cause
    assert "--config cpu" in cause
    assert at_chance([1.61] * 20, 5) == pytest.approx(np.log(5))
    assert at_chance([1.6] * 10 + [0.9] * 10, 5) is None  # it learned
    assert at_chance([0.1], None) is None  # a loss over classes that vary: nothing to compare


@pytest.mark.parametrize("argv", [["--version"], ["methods"]])
def test_commands_that_need_no_data_exit_zero(argv, capsys):
    assert main(argv) == 0


def test_evaluate_keeps_one_config_file_per_config_id(colour_folder, tmp_path):
    from mamf import evaluate

    settings = {"model": "tiny-random-clip", "data": {"root": str(colour_folder)}}
    out = tmp_path / "res"
    rows = evaluate(settings, out, ways=2, progress=False)
    evaluate(settings, out, ways=3, progress=False)  # same settings: the same file
    other = evaluate(settings, out, ways=2, progress=False, method="prototype")
    files = sorted(p.stem for p in (out / "configs").glob("*.yaml"))
    assert files == sorted({rows[0].config_id, other[0].config_id})
    assert not (out / "evaluate-config.yaml").exists()
