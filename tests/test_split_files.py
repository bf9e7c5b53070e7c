"""Split files and prompt templates that would change the numbers: repeated or foreign entries,
overlapping splits, a changed file under one path, templates that give classes one prompt, and
one-class tasks (issue 25, items 1-5); no two classes with one tokenised prompt (issue 42)."""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mamf.cli import main
from mamf.data.coop_splits import image_split
from mamf.data.dataset import ImageDataset
from mamf.data.prompts import class_prompts, resolve_templates
from mamf.system.errors import MamfError

COMMON = ["--model", "tiny-random-clip", "--protocol", "coop", "--shots", "2", "--set",
          "train.freeze_image_backbone=true", "--set", "train.freeze_text_tower=true", "--quiet"]


def entries(dataset: ImageDataset, low: str, high: str) -> list[list]:
    """Split-file entries of every class's images with file names in [low, high)."""
    return [[f"images/{dataset.classes[c]}/{dataset.file_names[i]}", c, dataset.classes[c]]
            for c, x in enumerate(dataset.class_images) for i in x
            if low <= dataset.file_names[i] < high]


def good_split(dataset: ImageDataset) -> dict:
    return {"train": entries(dataset, "", "img_004"),
            "val": entries(dataset, "img_004", "img_006"),
            "test": entries(dataset, "img_006", "img_999")}


def write(path, split) -> str:
    path.write_text(json.dumps(split))
    return str(path)


def test_a_test_image_listed_many_times_counts_once(shared_colour_folder, tmp_path, caplog):
    dataset = ImageDataset.load(shared_colour_folder, 32)
    split = good_split(dataset)
    clean = image_split(dataset, "test", write(tmp_path / "a.json", split))
    split["test"] += [split["test"][0]] * 20
    with caplog.at_level(logging.WARNING):
        repeated = image_split(dataset, "test", write(tmp_path / "b.json", split))
    assert [list(x) for x in repeated] == [list(x) for x in clean]
    assert "20 repeated entries" in caplog.text


def test_a_split_file_whose_test_overlaps_its_train_is_refused(shared_colour_folder, tmp_path):
    dataset = ImageDataset.load(shared_colour_folder, 32)
    split = good_split(dataset)
    split["test"] += split["train"][:3]
    with pytest.raises(MamfError, match=r"black/img_000.png is in both train and test \(with 3 "):
        image_split(dataset, "test", write(tmp_path / "s.json", split))


def test_split_file_warnings_are_printed_once(shared_colour_folder, tmp_path, caplog):
    dataset = ImageDataset.load(shared_colour_folder, 32)
    split = good_split(dataset)
    split["test"].append(["images/nowhere/x.jpg", 0, "nowhere"])
    path = write(tmp_path / "s.json", split)
    with caplog.at_level(logging.WARNING):
        for name in ("train", "dev", "test", "test"):
            image_split(dataset, name, path)
    assert caplog.text.count("1 entry naming no image") == 1


def test_another_split_file_under_one_path_is_another_setting(shared_colour_folder, tmp_path,
                                                               capsys):
    """Rows record the split file's sha256; a file changed under the same path is refused
    rather than appended as a second row of the same seed."""
    dataset = ImageDataset.load(shared_colour_folder, 32)
    split = good_split(dataset)
    path = write(tmp_path / "split.json", split)
    out = tmp_path / "out"
    args = ["evaluate", "--method", "zeroshot", "--data", str(shared_colour_folder), "--out",
            str(out), "--split-file", path, *COMMON]
    assert main(args) == 0
    (row,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert row["split_file_sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert main(args) == 0  # the same file: skipped
    split["test"] = split["test"][:-4] + [split["test"][0]] * 20  # 16 test images, repeats
    write(tmp_path / "split.json", split)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "measured with other settings" in err and len(err.strip().splitlines()) == 1
    assert len((out / "results.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("template", ["{label.__class__.__name__}", "{label.__class__.__mro__}",
                                      "{label[0]}", "{label!r}", "{label:{label}}",
                                      "A {label} or {other}."])
def test_templates_without_a_plain_label_field_are_refused(colour_folder, template):
    with pytest.raises(MamfError, match="malformed"):
        class_prompts(colour_folder, ["red", "green"], template)


def test_templates_that_give_two_classes_one_prompt_are_refused(colour_folder):
    assert class_prompts(colour_folder, ["red", "green"], "a {label:>8} photo") == \
        ["a      red photo", "a    green photo"]
    with pytest.raises(MamfError, match="'gre' and 'grey' the same prompt 'gre'"):
        class_prompts(colour_folder, ["gre", "grey"], "{label:.3}")
    with pytest.raises(MamfError, match="the same prompt"):
        class_prompts(colour_folder, ["a_b", "a b"], "A photo of a {label}.")


def test_a_template_set_is_bounded():
    assert len(resolve_templates(["{label}"] * 1000)) == 1000
    with pytest.raises(MamfError, match="1001 templates; at most 1000"):
        resolve_templates([f"{i} {{label}}" for i in range(1001)])


def test_base2novel_with_one_novel_class_writes_strict_json(tmp_path):
    folder = make_folder(tmp_path / "three", n_classes=3)
    out = tmp_path / "out"
    assert main(["evaluate", "--method", "zeroshot", "--data", str(folder), "--out", str(out),
                 *COMMON[:2], "--protocol", "base2novel", "--shots", "2", "--quiet"]) == 0
    text = (out / "results.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text

    def strict(name):
        raise ValueError(name)

    (row,) = [json.loads(x, parse_constant=strict) for x in text.splitlines()]
    assert row["task_similarity"][1] is None and isinstance(row["task_similarity"][0], float)


def test_rows_never_hold_nan(tmp_path):
    from mamf.system.io import append_jsonl

    append_jsonl(tmp_path / "r.jsonl", {"a": float("nan"), "b": [1.0, float("inf")], "c": 2})
    assert json.loads((tmp_path / "r.jsonl").read_text()) == {"a": None, "b": [1.0, None], "c": 2}


# -- property tests: whatever a split file or template holds, the splits are sets of the
# folder's own images, disjoint, each image once; or the file is refused with one MamfError
_FOLDER: dict = {}


def _dataset(tmp_path_factory) -> ImageDataset:
    if "d" not in _FOLDER:
        root = make_folder(tmp_path_factory.mktemp("prop") / "colours", n_classes=3, per_class=6)
        _FOLDER["d"] = ImageDataset.load(root, 32)
    return _FOLDER["d"]


_ENTRY = st.one_of(
    st.tuples(st.integers(0, 2), st.integers(0, 5)),  # an image of the folder
    st.sampled_from([["images/nowhere/x.jpg", 0, "x"], ["red/img_999.png", 0, "red"], [],
                     [3, 1], "red/img_000.png", None, ["../../red/img_000.png", 0, "red"]]))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({k: st.lists(_ENTRY, max_size=25) for k in ("train", "val", "test")}))
def test_any_split_file_gives_disjoint_splits_of_the_folders_images(tmp_path_factory, raw):
    dataset = _dataset(tmp_path_factory)
    names = ["red", "green", "blue"]

    def as_entry(e):
        return [f"x/{names[e[0]]}/img_{e[1]:03d}.png", e[0], names[e[0]]] \
            if isinstance(e, tuple) else e

    split = {k: [as_entry(e) for e in v] for k, v in raw.items()}
    path = tmp_path_factory.mktemp("split") / "s.json"
    listed = {k: {(names[e[0]], e[1]) for e in v if isinstance(e, tuple)}
              | {("red", 0) for e in v if isinstance(e, list) and e[:1] == ["../../red/img_000.png"]}
              for k, v in raw.items()}
    overlap = any(listed[a] & listed[b] for a, b in (("train", "val"), ("train", "test"),
                                                    ("val", "test")))
    try:
        got = {s: image_split(dataset, s, write(path, split)) for s in ("train", "dev", "test")}
    except MamfError as e:
        assert overlap and "is in both" in str(e)
        return
    assert not overlap
    seen: set = set()
    for s, key in (("train", "train"), ("dev", "val"), ("test", "test")):
        images = {(dataset.classes[c], dataset.file_names[i]) for c, x in enumerate(got[s])
                  for i in x}
        assert sum(len(x) for x in got[s]) == len(images)  # each image once
        assert images == {(n, f"img_{i:03d}.png") for n, i in listed[key]}
        assert not images & seen
        seen |= images


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="{}.:[]!r0a label_>^<", max_size=20))
def test_any_template_gives_distinct_prompts_or_one_clear_error(template):
    classes = ["red", "green", "blue"]
    try:
        prompts = class_prompts(".", classes, template)
    except MamfError:
        return
    assert len(set(prompts)) == 3 and prompts == [template.format(label=c) for c in classes]
    assert "str" not in "".join(prompts) or "str" in template


def test_a_run_trained_on_another_split_file_content_is_not_resumed(shared_colour_folder,
                                                                     tmp_path, capsys):
    dataset = ImageDataset.load(shared_colour_folder, 32)
    split = good_split(dataset)
    path = write(tmp_path / "split.json", split)
    args = ["train", "--method", "classical", "--steps", "1", "--data",
            str(shared_colour_folder), "--out", str(tmp_path / "run"), "--split-file", path,
            *COMMON]
    assert main(args) == 0 and (tmp_path / "run" / "split-file.sha256").is_file()
    assert main(args) == 0  # done: same settings
    split["train"] = split["train"][1:]
    write(tmp_path / "split.json", split)
    capsys.readouterr()
    assert main(args) == 2
    assert "holds a training run with other settings" in capsys.readouterr().err


_SPELLINGS = ["café", unicodedata.normalize("NFD", "café"), "cafe", "Café", "red", "a_b", "a b",
              "x" * 44 + "1", "x" * 44 + "2", "zebra", "<unk>"]
_MODELS: dict = {}


def _model(kind: str, tmp_path_factory):
    """The tiny model's byte tokenizer (cuts at 46 bytes), or a word-level one that normalises
    to NFC and maps unknown words to one token, as a real CLIP tokenizer's vocabulary would."""
    if kind not in _MODELS:
        from test_silent_results import normalising_clip_folder

        from mamf.models.registry import load_model

        _MODELS[kind] = load_model("tiny-random-clip") if kind == "bytes" else \
            load_model(str(normalising_clip_folder(tmp_path_factory.mktemp("nfc") / "clip")))
    return _MODELS[kind]


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_SPELLINGS), min_size=2, max_size=5, unique=True),
       st.sampled_from(["bytes", "words"]),
       st.one_of(st.sampled_from(["{label}", "A photo of a {label}.", "{label:.3}"]),
                 st.lists(st.sampled_from(["a photo of a cat.", "a photo.", "red", "café",
                                           unicodedata.normalize("NFD", "café"), "x" * 60]),
                          min_size=5, max_size=5)))
def test_no_two_classes_ever_get_one_tokenised_prompt(tmp_path_factory, names, kind, given_by):
    """Whatever gives the prompts (a template, a label_to_text.json) and whatever the tokenizer
    does to them, the classes' tokenised prompts are distinct or the data is refused."""
    import torch

    from mamf.data.prompts import token_rows
    from mamf.features.inputs import ModelInputs

    root = tmp_path_factory.mktemp("prompts")
    template = "{label}"
    if isinstance(given_by, str):
        template = given_by
    else:
        (root / "label_to_text.json").write_text(json.dumps(dict(zip(names, given_by))))
    model = _model(kind, tmp_path_factory)
    try:
        prompts = class_prompts(root, names, template)
        dataset = SimpleNamespace(classes=names, prompts=prompts, ensemble=None)
        inputs = ModelInputs(model, dataset, torch.device("cpu"))
    except MamfError as e:
        assert "prompt" in str(e)
        return
    assert len(set(token_rows(inputs.tokens))) == len(names)
