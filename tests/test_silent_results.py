"""Inputs that made a number silently wrong on the newer surfaces (issue 42): each now gives the
right result or one clear error line."""

from __future__ import annotations

import json
import unicodedata

import pytest
from conftest import make_folder

from mamf.cli import main
from mamf.errors import MamfError
from mamf.models.registry import load_model


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mamf: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def evaluate(folder, out, *extra):
    return main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(out), "--ways", "2", "--quiet", *extra])


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
