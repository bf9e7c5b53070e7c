"""Bad input gets one clear line or a counted skip; numbers are reproducible; nothing unsafe runs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mamf.catalogue import Config
from mamf.cli import main
from mamf.config import build_config, set_value
from mamf.data.dataset import ImageDataset
from mamf.data.folder import scan_folder
from mamf.system.errors import MamfError


def evaluate(folder, out, *extra):
    return main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(out), "--ways", "2", "--quiet", *extra])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mamf: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_and_empty_folders(tmp_path, capsys):
    assert evaluate(tmp_path / "missing", tmp_path / "o") == 2
    assert "does not exist" in one_error_line(capsys)
    (tmp_path / "empty" / "label").mkdir(parents=True)
    assert evaluate(tmp_path / "empty", tmp_path / "o") == 2
    assert "no images found" in one_error_line(capsys)


def test_damaged_files_are_skipped_and_counted(tmp_path, caplog):
    folder = make_folder(tmp_path / "d", n_classes=3, per_class=10)
    (folder / "red" / "zero.png").write_bytes(b"")
    (folder / "red" / "text.png").write_text("not an image")
    good = (folder / "green" / "img_000.png").read_bytes()
    (folder / "green" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "blue" / "notes.txt").write_text("ignored")
    (folder / "nothing_here").mkdir()
    with caplog.at_level(logging.WARNING):
        ds = ImageDataset.load(folder, 32)
    text = caplog.text
    assert "skipped 3 unreadable image(s)" in text
    assert "1 label folder(s) with no images" in text and "nothing_here" in text
    assert "1 file(s) that are not images" in text
    assert ds.classes == ["blue", "green", "red"]
    assert [len(x) for x in ds.class_images] == [10, 10, 10]
    assert evaluate(folder, tmp_path / "o") == 0


def test_odd_image_modes_simply_work(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "modes"
    rgb = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    images = {
        "gray.png": rgb.convert("L"), "palette.png": rgb.convert("P"),
        "rgba.png": rgb.convert("RGBA"), "la.png": rgb.convert("LA"),
        "cmyk.jpg": rgb.convert("CMYK"), "deep.png": Image.fromarray(
            rng.integers(0, 65535, (20, 30), dtype=np.uint16)),
        "one_bit.png": rgb.convert("1"), "plain.jpg": rgb,
    }
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for name, img in images.items():
            img.save(folder / label / name)
    assert Image.open(folder / "a" / "deep.png").mode.startswith("I")
    ds = ImageDataset.load(folder, 16)
    assert [len(x) for x in ds.class_images] == [len(images)] * 2
    assert ds.images.shape == (2 * len(images), 16, 16, 3)


def test_unusual_label_names(tmp_path):
    names = ["with space", "ünïcödé 鳥", "odd&chars#(1)", "under_score"]
    folder = make_folder(tmp_path / "names", n_classes=4, per_class=10)
    for old, new in zip(sorted(p.name for p in folder.iterdir()), names):
        (folder / old).rename(folder / new)
    ds = ImageDataset.load(folder, 32)
    assert ds.classes == sorted(names)
    assert "A photo of a under score." in ds.prompts
    assert evaluate(folder, tmp_path / "o") == 0


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('["a list"]', "must be a JSON object"),
    ('{"red": "a red thing"}', "has no prompt for label(s) 'blue'"),
    ('{"red": "r", "green": "g", "blue": 3}', "the prompt for 'blue' is not a non-empty string"),
])
def test_malformed_label_to_text(tmp_path, capsys, content, message):
    folder = make_folder(tmp_path / "p", n_classes=3, per_class=10)
    (folder / "label_to_text.json").write_text(content)
    assert evaluate(folder, tmp_path / "o") == 2
    assert message in one_error_line(capsys)


def test_a_config_file_cannot_execute_anything(tmp_path, capsys, colour_folder):
    bad = tmp_path / "evil.yaml"
    bad.write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    assert evaluate(colour_folder, tmp_path / "o", "--config", str(bad)) == 2
    assert "not valid YAML" in one_error_line(capsys)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")


def test_dataset_names_cannot_escape_the_output_folder():
    from mamf.runs.experiment import parse_experiment

    with pytest.raises(MamfError, match="names a folder inside --out"):
        parse_experiment({"datasets": {"../../etc": {"build": "counting"}}})


def test_an_experiment_folder_of_another_experiment_is_refused(tmp_path, colour_folder):
    from mamf.runs.experiment import parse_experiment, run_experiment

    raw = {"model": "tiny-random-clip", "methods": ["zeroshot"], "seeds": [1],
           "datasets": {"c": {"root": str(colour_folder), "ways": [2]}}}
    run_experiment(parse_experiment({**raw, "name": "first"}), tmp_path / "o", progress=False)
    with pytest.raises(MamfError, match="holds results of another experiment"):
        run_experiment(parse_experiment({**raw, "name": "second"}), tmp_path / "o",
                       progress=False)


def test_a_diverging_loss_stops_with_a_clear_line_and_keeps_the_checkpoint(
        shared_colour_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(shared_colour_folder), "--out", str(out), "--lr", "1e30", "--steps", "30",
                 "--quiet", "--set", "train.checkpoint_every=1", "--batch-size", "8"])
    assert code == 2
    assert "the training loss became" in one_error_line(capsys)
    assert (out / "checkpoints" / "latest.json").is_file()
    assert not (out / "model.safetensors").exists()


@pytest.mark.slow
def test_two_fresh_processes_give_bit_identical_results(shared_colour_folder, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    script = (
        "import sys; from mamf.cli import main; d, o = sys.argv[1:3];"
        "assert main(['train','--method','mamf','--model','tiny-random-clip','--data',d,"
        "'--out',o+'/run','--lr','1e-3','--steps','15','--quiet','--ways','3']) == 0;"
        "assert main(['evaluate','--run',o+'/run','--data',d,'--out',o+'/ev','--ways','3',"
        "'--quiet','--set','metatest.lr=1e-3']) == 0")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(shared_colour_folder),
                        str(tmp_path / name)], env=env, check=True, timeout=300,
                       capture_output=True)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "run" / "model.safetensors").read_bytes() == \
        (b / "run" / "model.safetensors").read_bytes()
    row_a = json.loads((a / "ev" / "results.jsonl").read_text())
    row_b = json.loads((b / "ev" / "results.jsonl").read_text())
    assert row_a["task_accs"] == row_b["task_accs"] and row_a["acc_mean"] == row_b["acc_mean"]


SAFE_LABEL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\\x00"),
    min_size=1, max_size=20).filter(lambda s: not s.startswith(".") and s.strip() == s and
                                    len(s.encode()) < 200)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(labels=st.dictionaries(SAFE_LABEL, st.integers(0, 3), min_size=1, max_size=6))
def test_scanner_finds_every_label_sorted(tmp_path_factory, labels):
    root = tmp_path_factory.mktemp("scan")
    for label, count in labels.items():
        (root / label).mkdir()
        for i in range(count):
            (root / label / f"{i}.png").write_bytes(b"x")
    expected = sorted(label for label, count in labels.items() if count)
    if not expected:
        with pytest.raises(MamfError):
            scan_folder(root)
        return
    scan = scan_folder(root)
    assert list(scan.classes) == expected
    assert [len(f) for f in scan.files] == [labels[c] for c in expected]


CONFIG_KEYS = ["seed", "model", "data.ways", "data.protocol", "data.class_split", "train.lr",
               "train.augment", "train.steps", "metatest.reset", "train.bogus", "nope",
               "data", "train.lr.x"]
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                      st.text(max_size=8), st.lists(st.floats(0, 1), max_size=4),
                      st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(CONFIG_KEYS), value=ANY_VALUE)
def test_config_parser_accepts_or_refuses_cleanly(key, value):
    try:
        config = build_config(overrides={key: value})
    except MamfError:
        return
    assert isinstance(config, Config)
    for section in (config.data, config.train, config.metatest):
        for v in vars(section).values():
            if isinstance(v, float):
                assert np.isfinite(v)
    probe = Config()
    set_value(probe, key, value)  # what was accepted can be set again, with its declared type
