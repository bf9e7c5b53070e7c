"""Hostile or careless input ends in one `mamf: error:` line, in bounded time and memory.

Each test here failed before its fix: a hang, a traceback, a silently wrong prompt, or gigabytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import evaluate, make_folder, one_error_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mamf.cli import main
from mamf.config import build_config
from mamf.data.cache import decode
from mamf.data.dataset import ImageDataset
from mamf.runs.experiment import parse_experiment
from mamf.system.errors import MamfError


@contextlib.contextmanager
def within(seconds: float):
    """Turn a hang into a failure (the bugs here hung with memory growing)."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- item 3: whose label_to_text.json --------------------------------------------------------

def test_a_prompt_file_beside_a_plain_dataset_is_not_read(tmp_path, caplog):
    folder = make_folder(tmp_path / "colours", n_classes=2, per_class=3)
    (tmp_path / "label_to_text.json").write_text(json.dumps({"red": "WRONG", "green": "WRONG"}))
    with caplog.at_level(logging.INFO):
        ds = ImageDataset.load(folder, 16)
    assert ds.prompts == ["A photo of a green.", "A photo of a red."]
    assert "prompts from the template 'A photo of a {label}.'" in caplog.text


def test_a_nested_dataset_uses_the_prompt_file_above_its_subdatasets(tmp_path, caplog):
    make_folder(tmp_path / "root" / "one", n_classes=2, per_class=3)
    prompts = tmp_path / "root" / "label_to_text.json"
    prompts.write_text(json.dumps({"red": "a red thing", "green": "a green thing"}))
    with caplog.at_level(logging.INFO):
        ds = ImageDataset.load(tmp_path / "root", 16)
    assert ds.prompts == ["a green thing", "a red thing"]
    assert f"prompts from {prompts}" in caplog.text


# --- item 5: YAML aliases ("billion laughs") ------------------------------------------------

def laughs() -> str:
    """A flow list whose items define aliases nine times the one before: 9**9 'lol's when
    printed, about 400 bytes as YAML."""
    items = ["&a [" + ", ".join(["lol"] * 9) + "]"]
    items += [f"&{b} [" + ", ".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefgh", "bcdefghi")]
    return "[" + ", ".join(items) + "]"


@pytest.mark.parametrize("key", ["name", "model", "device", "precision"])
def test_an_experiment_value_built_from_aliases_is_refused_at_once(tmp_path, capsys, key):
    path = tmp_path / "laughs.yaml"
    path.write_text(f"{key}: {laughs()}\ndatasets: {{d: {{root: data}}}}\n")
    assert len(path.read_bytes()) < 600
    with within(10):
        assert main(["experiment", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    line = one_error_line(capsys)
    assert f"experiment '{key}' must be a string" in line and len(line) < 300


@pytest.mark.parametrize("key", ["model", "device", "precision", "data.template",
                                 "data.class_split", "train.lr"])
def test_a_config_value_built_from_aliases_is_refused_at_once(tmp_path, capsys, key):
    *section, name = key.split(".")
    body = f"{name}: {laughs()}\n"
    path = tmp_path / "config.yaml"
    path.write_text(f"{section[0]}:\n  {body}" if section else body)
    with within(10):
        assert evaluate(tmp_path, tmp_path / "o", "--config", str(path)) == 2
    line = one_error_line(capsys)
    assert f"config {key} must be" in line and len(line) < 300


# --- item 6: a long thin image is not stretched before the crop ------------------------------

def thin_png(path, length=200_000):
    Image.fromarray(np.zeros((length, 1), dtype=np.uint8)).save(path, optimize=True)
    return path


def test_decode_resamples_only_the_crop(tmp_path, monkeypatch):
    """Every image PIL is asked to make is at most a few times the output (it was 32 x 6.4M)."""
    path = thin_png(tmp_path / "thin.png")
    assert path.stat().st_size < 1000
    made = []
    resize = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        made.append(tuple(size))
        assert size[0] * size[1] <= 4 * 32 * 32, f"resizing to {size}"
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    assert decode(path, 32).shape == (32, 32, 3)
    assert made == [(32, 32)]


def test_decode_of_a_square_image_is_a_plain_resize(tmp_path):
    """Cropping first changes no pixel of a square image (the demo's datasets are square)."""
    rng = np.random.default_rng(0)
    for side, size in ((24, 32), (128, 32), (300, 224), (97, 64)):
        img = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        img.save(tmp_path / "sq.png")
        expected = np.asarray(img.resize((size, size), Image.BICUBIC))
        assert np.array_equal(decode(tmp_path / "sq.png", size), expected)


@pytest.mark.slow
def test_a_thin_png_costs_megabytes_not_gigabytes(tmp_path):
    path = thin_png(tmp_path / "thin.png")
    script = textwrap.dedent("""\
        import resource, sys
        from mamf.data.cache import decode
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert decode(sys.argv[1], 32).shape == (32, 32, 3)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """)
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    grown_mb = int(out.stdout.split()[-1])
    assert grown_mb < 100, f"peak memory grew by {grown_mb} MB (was about 1200 MB)"


# --- item 7: file and label names that are not UTF-8 -----------------------------------------

def non_utf8_names(tmp_path):
    folder = make_folder(tmp_path / "data", n_classes=3, per_class=10)
    try:
        os.rename(folder / "red", folder / os.fsdecode(b"caf\xe9"))
        os.rename(folder / "green" / "img_000.png", folder / "green" / os.fsdecode(b"\xff.png"))
    except OSError:
        pytest.skip("this file system wants UTF-8 names")
    (folder / os.fsdecode(b"empty\xfe")).mkdir()
    return folder


def test_names_that_are_not_utf8_work(tmp_path, capsys, caplog):
    folder = non_utf8_names(tmp_path)
    ds = ImageDataset.load(folder, 16)
    assert [len(x) for x in ds.class_images] == [10, 10, 10]
    assert "A photo of a caf\\xe9." in ds.prompts
    with caplog.at_level(logging.WARNING):
        assert evaluate(folder, tmp_path / "o") == 0
    assert "empty\\xfe" in caplog.text
    assert "acc" in capsys.readouterr().out


# --- item 11: experiment sections of the wrong type, duplicates ------------------------------

DATA = {"d": {"root": "x"}}


@pytest.mark.parametrize("raw, message", [
    ({"datasets": DATA, "settings": [1, 2]}, "'settings' must be a mapping"),
    ({"datasets": DATA, "settings": []}, "'settings' must be a mapping"),
    ({"datasets": DATA, "method_settings": [1]}, "'method_settings' must be a mapping"),
    ({"datasets": DATA, "method_settings": {"mamf": {"train": [1]}}},
     "method_settings.mamf.train must be a mapping"),
    ({"datasets": DATA, "method_settings": {"mamf": 3}}, "method_settings.mamf must be a mapping"),
    ({"datasets": {"d": {"root": "x", "settings": 5}}}, "'settings' must be a mapping"),
    ({"datasets": {"d": {"build": "counting", "build_options": [1]}}},
     "'build_options' must be a mapping"),
    ({"datasets": {"d": {"build": "counting", "build_options": {"colour": 1}}}},
     "has no option 'colour'"),
    ({"datasets": {"d": {"build": "nonesuch"}}}, "no dataset builder"),
    ({"datasets": {"d": {"root": "x", "build_options": {"seed": 1}}}}, "go with 'build'"),
    ({"datasets": {"x": [1]}}, "dataset 'x' must be a mapping"),
    ({"datasets": {"d": {"root": ["x"]}}}, "'root' must be a string"),
    ({"datasets": {"d": {"build": {"a": 1}}}}, "'build' must be a string"),
    ({"datasets": {"d": {"root": "x", "ways": {"a": 1}}}}, "'ways' must be a task size"),
    ({"datasets": {"d": {"root": "x", "ways": [2, [3]]}}}, "'ways' must be a task size"),
    ({"datasets": {"d": {"root": "x", "ways": [1]}}}, "'ways' must be a task size"),
    ({"datasets": {"d": {"root": "x", "ways": "two"}}}, "'ways' must be a task size"),
    ({"datasets": {(1, 2): {"root": "x"}}}, r"dataset name \(1, 2\) must be"),
    ({"datasets": DATA, "methods": [["mamf"]]}, r"unknown method \['mamf'\]"),
    ({"datasets": DATA, "methods": "mamf"}, "'methods' must be a non-empty list"),
    ({"datasets": DATA, "seeds": [1, "2"]}, "'seeds' must be a list of integers"),
    ({"datasets": DATA, "seeds": []}, "'seeds' must be a list of integers"),
    ({"datasets": DATA, 5: 1}, "unknown experiment key"),
    ({"datasets": DATA, "methods": ["mamf", "zeroshot", "mamf"]},
     "'methods' lists 'mamf' twice"),
    ({"datasets": DATA, "seeds": [1, 2, 1]}, "'seeds' lists 1 twice"),
    ({"datasets": {"d": {"root": "x", "ways": [2, 3, 2]}}}, "'ways' lists 2 twice"),
    ({"datasets": {"d": {"root": "x", "ways": "2,3,2"}}}, "'ways' lists 2 twice"),
])
def test_wrong_experiment_sections_are_one_clear_line(raw, message):
    with pytest.raises(MamfError, match=message):
        parse_experiment(raw)


def test_good_ways_forms_still_parse():
    for ways, parsed in ((None, None), (3, 3), ([2, 4], [2, 4]), ("all", "all"),
                         ("2, 4", [2, 4])):
        exp = parse_experiment({"datasets": {"d": {"root": "x", "ways": ways}}})
        assert exp.datasets[0].ways == parsed


@pytest.mark.parametrize("builder, options, message", [
    ("counting", {"per_class": "LAUGHS"}, "per_class must be an integer"),
    ("fashion-mnist", {"split": "LAUGHS"}, "split must be 'train' or 'test'"),
    ("fashion-mnist", {"split": ["train"]}, "split must be 'train' or 'test'"),
    ("fashion-mnist", {"source_dir": [1]}, "source_dir must be a folder name"),
    ("emoji", {"cache_dir": {"a": 1}}, "cache_dir must be a folder name"),
])
def test_builder_options_of_the_wrong_type_are_one_short_line(tmp_path, builder, options,
                                                             message):
    import yaml

    from mamf.data.builders import build

    options = {k: yaml.safe_load(laughs()) if v == "LAUGHS" else v for k, v in options.items()}
    with within(10), pytest.raises(MamfError, match=message) as error:
        build(builder, tmp_path / "b", **options)
    assert len(str(error.value)) < 300


# --- item 12: too deep, not UTF-8 --------------------------------------------------------------

@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "[" * 40 + "]" * 40, "&a [*a]"])
def test_deeply_nested_yaml_is_one_line(tmp_path, capsys, text):
    path = tmp_path / "deep.yaml"
    path.write_text("data:\n  class_split: " + text + "\n")
    assert evaluate(tmp_path, tmp_path / "o", "--config", str(path)) == 2
    assert "nests more than" in one_error_line(capsys)
    path.write_text("datasets: " + text + "\n")
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "nests more than" in one_error_line(capsys)


def test_a_deeply_nested_label_to_text_is_one_line(tmp_path, capsys):
    folder = make_folder(tmp_path / "p", n_classes=3, per_class=10)
    (folder / "label_to_text.json").write_text("[" * 100_000 + "]" * 100_000)
    assert evaluate(folder, tmp_path / "o") == 2
    assert "nests too deeply" in one_error_line(capsys)


def test_config_and_experiment_files_that_are_not_utf8(tmp_path, capsys, colour_folder):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model: tiny-random-clip\nname: caf\xe9\n".encode("latin-1"))
    assert evaluate(colour_folder, tmp_path / "o", "--config", str(path)) == 2
    assert "is not UTF-8 text" in one_error_line(capsys)
    assert main(["experiment", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "is not UTF-8 text" in one_error_line(capsys)


# --- item 14: a CLIP folder holding only a pickle ---------------------------------------------

def test_a_clip_folder_with_only_a_pickle_is_refused(tmp_path, capsys, colour_folder):
    from safetensors.torch import load_file
    from test_models import save_clip_folder

    from mamf.config import dump_yaml

    clip = save_clip_folder(tmp_path / "clip")
    torch.save(load_file(clip / "model.safetensors"), clip / "pytorch_model.bin")
    (clip / "model.safetensors").unlink()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(build_config({"model": str(clip)})))
    (run / "model.safetensors").write_bytes(b"")
    assert main(["evaluate", "--run", str(run), "--data", str(colour_folder), "--out",
                 str(tmp_path / "o"), "--quiet"]) == 2
    assert "only the pickle pytorch_model.bin, which mamf never loads" in one_error_line(capsys)


def test_a_clip_folder_with_damaged_files_is_one_line(tmp_path):
    from test_models import save_clip_folder

    from mamf.models import load_model

    clip = save_clip_folder(tmp_path / "clip")
    weights = (clip / "model.safetensors").read_bytes()
    (clip / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(MamfError, match="cannot load CLIP model"):
        load_model(str(clip))
    (clip / "model.safetensors").write_bytes(weights)
    (clip / "preprocessor_config.json").write_text('{"image_mean": "abc"}')
    with pytest.raises(MamfError, match="image_mean must be three numbers"):
        load_model(str(clip))
    (clip / "preprocessor_config.json").write_text("[1]")
    with pytest.raises(MamfError, match="preprocessor_config.json is not a JSON object"):
        load_model(str(clip))
    (clip / "config.json").write_bytes(b"\xff\xfe")
    with pytest.raises(MamfError, match="unreadable config.json"):
        load_model(str(clip))


# --- item 15: --set values are YAML where the setting wants a list or a mapping ---------------

@pytest.mark.parametrize("value, expected", [
    ("[0.1,0.1,0.8]", [0.1, 0.1, 0.8]), ("[0.1, 0.1, 0.8]", [0.1, 0.1, 0.8]),
    ("0.6,0.2,0.2", [0.6, 0.2, 0.2]),
])
def test_set_takes_yaml_lists(value, expected):
    assert build_config(overrides={"data.class_split": value}).data.class_split == expected


def test_set_on_the_command_line_takes_lists_and_mappings(tmp_path, colour_folder):
    from mamf.cli import _config, parser

    args = parser().parse_args([
        "train", "--out", str(tmp_path), "--data", str(colour_folder),
        "--set", "data.class_split=[0.5,0.25,0.25]", "--set", "train={lr: 1e-5, steps: 7}",
        "--set", "data.template={label}", "--set", "data.subdataset=0755",
        "--set", "data.support_match=[ab]*", "--set", "data.query_match=*"])
    config = _config(args, {})
    assert config.data.class_split == [0.5, 0.25, 0.25]
    assert config.train.lr == 1e-5 and config.train.steps == 7
    # strings stay the text given, even where YAML would read a mapping, a number or a list
    assert config.data.template == "{label}" and config.data.subdataset == "0755"
    assert config.data.support_match == "[ab]*"


def test_set_of_bad_yaml_is_one_line(tmp_path, capsys, colour_folder):
    assert evaluate(colour_folder, tmp_path / "o", "--set", "data.class_split=[0.1,") == 2
    assert "data.class_split is not valid YAML" in one_error_line(capsys)
    assert evaluate(colour_folder, tmp_path / "o", "--set", "train=[1]") == 2
    assert "config train must be a mapping" in one_error_line(capsys)


# --- item 16: cosmetics ------------------------------------------------------------------------

def test_a_template_gets_its_real_format_error(tmp_path, capsys, colour_folder):
    assert evaluate(colour_folder, tmp_path / "o", "--template", "{label!z}") == 2
    line = one_error_line(capsys)
    assert "the conversion !z" in line and "no {label} placeholder" not in line
    assert evaluate(colour_folder, tmp_path / "o", "--template", "{label.nope}") == 2
    assert "the field {label.nope}: only {label} is a field" in one_error_line(capsys)
    assert evaluate(colour_folder, tmp_path / "o", "--template", "{label:>999999999}") == 2
    assert "field width" in one_error_line(capsys)
    assert evaluate(colour_folder, tmp_path / "o", "--template", "a photo") == 2
    assert "has no {label} placeholder" in one_error_line(capsys)


def test_huge_values_are_shown_short(tmp_path, capsys, colour_folder):
    from mamf.system.errors import shown

    assert evaluate(colour_folder, tmp_path / "o", "--set", f"data.start_n=-{'9' * 300}") == 2
    line = one_error_line(capsys)
    assert "an integer of 300 digits" in line and "999999999999" not in line
    for key in ("data.ways", "data.tasks", "data.shots"):
        assert evaluate(colour_folder, tmp_path / "o", "--set", f"{key}={'9' * 300}") == 2
        assert f"{key} must be at most" in one_error_line(capsys)
    assert shown(10**5000) == "<an integer of 5001 digits>"
    assert len(shown("x" * 10_000)) <= 100
    assert len(shown(list(range(10**6)))) <= 100


def test_a_skipped_label_folder_is_reported_once(tmp_path, caplog):
    folder = make_folder(tmp_path / "d", n_classes=3, per_class=10)
    (folder / "nothing_here").mkdir()
    with caplog.at_level(logging.WARNING):
        assert evaluate(folder, tmp_path / "o") == 0
    assert caplog.text.count("label folder(s) with no images") == 1


def test_a_config_that_is_a_directory_says_so(tmp_path, capsys, colour_folder):
    assert evaluate(colour_folder, tmp_path / "o", "--config", str(tmp_path)) == 2
    assert "is a directory" in one_error_line(capsys)


# --- the fuzz: any experiment mapping parses or is one MamfError, quickly ----------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.integers(),
                    st.floats(allow_nan=True), st.text(max_size=6),
                    st.sampled_from(["mamf", "zeroshot", "classical", "fomaml", "all", "x",
                                     "cpu", "auto", "2,3", "train", "data", "lr", "ways"]))
NESTED = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.text(max_size=6), st.integers(), st.sampled_from(
        ["train", "metatest", "data", "lr", "ways", "root", "build", "settings", "mamf"])),
        inner, max_size=4)), max_leaves=12)
SECTIONS = {
    "name": NESTED, "model": NESTED, "device": NESTED, "precision": NESTED,
    "methods": st.one_of(NESTED, st.lists(st.sampled_from(
        ["mamf", "zeroshot", "classical", "fomaml"]), max_size=4)),
    "seeds": st.one_of(NESTED, st.lists(st.integers(), max_size=3)),
    "settings": st.one_of(NESTED, st.fixed_dictionaries({}, optional={
        "train": NESTED, "data": NESTED, "metatest": NESTED, "seed": NESTED})),
    "method_settings": st.one_of(NESTED, st.dictionaries(st.sampled_from(
        ["mamf", "classical", "x"]), st.one_of(NESTED, st.fixed_dictionaries({}, optional={
            "train": NESTED, "metatest": NESTED})), max_size=2)),
    "datasets": st.one_of(NESTED, st.dictionaries(st.one_of(st.text(max_size=5), NESTED.filter(
        lambda k: not isinstance(k, (list, dict)))), st.one_of(NESTED, st.fixed_dictionaries(
            {}, optional={"root": st.one_of(st.just("x"), NESTED),
                          "build": st.one_of(st.just("counting"), NESTED),
                          "build_options": NESTED, "settings": NESTED,
                          "ways": NESTED})), max_size=2)),
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.fixed_dictionaries({}, optional={**SECTIONS, "bogus": NESTED}))
def test_any_experiment_mapping_parses_or_is_one_mamf_error(raw):
    with within(5):
        try:
            exp = parse_experiment(raw)
        except MamfError as e:
            assert len(str(e)) < 400 and "\n" not in str(e)
            return
    assert exp.methods and exp.seeds and exp.datasets
    assert all(isinstance(v, str) for v in (exp.name, exp.model, exp.device, exp.precision))


def test_a_huge_ways_on_the_command_line_is_refused_shown_short(colour_folder, tmp_path, capsys):
    from mamf.cli import main

    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", str(tmp_path / "out"), "--ways", "9" * 300, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ways must be between 2 and" in err and "9" * 200 not in err
    assert len(err) < 300
