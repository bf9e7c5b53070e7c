"""Prompt ensembles (`data.templates`): a class's embedding is the mean of its prompts'
normalised embeddings; CLIP's ImageNet templates ship as the set `imagenet`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamf.config import build_config
from mamf.data.prompts import resolve_templates, templates_tag
from mamf.results import Row
from mamf.runs.measure import evaluate_prepared
from mamf.runs.prepare import prepare
from mamf.system.errors import MamfError

TWO = ["a photo of a {label}.", "a drawing of a {}."]


def encode(model, text: str) -> torch.Tensor:
    return model.encode_texts(model.tokenize([text]))[0]


@pytest.mark.parametrize("frozen", [True, False])
def test_a_template_list_averages_the_normalised_prompt_embeddings(colour_folder, frozen):
    config = build_config(overrides={"model": "tiny-random-clip", "data.root": str(colour_folder),
                                     "data.templates": TWO,
                                     "train.freeze_text_tower": frozen})
    model, dataset, inputs = prepare(config)
    assert dataset.ensemble[0] == ["a photo of a blue.", "a drawing of a blue."]
    with torch.no_grad():
        got = inputs.texts(model, np.array([2, 0]))
        for row, c in zip(got, (2, 0)):
            label = dataset.classes[c]
            want = (F.normalize(encode(model, f"a photo of a {label}."), dim=-1)
                    + F.normalize(encode(model, f"a drawing of a {label}."), dim=-1)) / 2
            assert torch.allclose(row, want, atol=1e-5)
        # the mean of two different unit vectors is shorter than one: really averaged
        assert float(got[0].norm()) < 0.999
    row = evaluate_prepared(model, dataset, inputs, config, "zeroshot", 3, progress=False).to_json()
    assert row["templates"] == templates_tag(TWO) and row["templates"].startswith("2 templates #")


def test_the_imagenet_set_is_clips_80_templates_and_rows_name_it(colour_folder):
    templates = resolve_templates(["imagenet"])
    assert len(templates) == len(set(templates)) == 80
    assert templates[0] == "a bad photo of a {label}." and "itap of my {label}." in templates
    assert templates_tag(["imagenet"]) == "imagenet"
    config = build_config(overrides={"model": "tiny-random-clip", "data.root": str(colour_folder),
                                     "data.templates": "imagenet",
                                     "train.freeze_text_tower": True})
    model, dataset, inputs = prepare(config)
    assert len(dataset.ensemble[0]) == 80 and inputs.texts(model, np.arange(6)).shape[0] == 6
    row = evaluate_prepared(model, dataset, inputs, config, "zeroshot", 3, progress=False).to_json()
    assert row["templates"] == "imagenet"
    with pytest.raises(MamfError, match="unknown template set 'nope'"):
        resolve_templates(["nope"])


def test_without_an_ensemble_nothing_changes(colour_folder):
    config = build_config(overrides={"model": "tiny-random-clip", "data.root": str(colour_folder)})
    model, dataset, inputs = prepare(config)
    assert dataset.ensemble is None and inputs.per_class == 1
    with torch.no_grad():
        assert torch.equal(inputs.texts(model, np.array([1]))[0],
                           encode(model, dataset.prompts[1]))
    row = evaluate_prepared(model, dataset, inputs, config, "zeroshot", 3, progress=False).to_json()
    assert row["templates"] is None


def test_rows_and_the_reports_setup_say_what_gave_the_prompts(colour_folder, tmp_path):
    """A label_to_text.json beside the data wins over the config's template: the row says so,
    and the report's Setup names the file, not the template that was never used."""
    import json
    import shutil

    from mamf.report.setup import setup_grid

    def zeroshot_row(root, **over):
        config = build_config(overrides={"model": "tiny-random-clip", "data.root": str(root),
                                         **over})
        model, dataset, inputs = prepare(config)
        return evaluate_prepared(model, dataset, inputs, config, "zeroshot", 3,
                                 progress=False)

    def prompts_column(rows):
        (head, body), _, _ = setup_grid(rows, None)
        return body[0][head.index("prompts")]

    named = tmp_path / "named"
    shutil.copytree(colour_folder, named)
    classes = sorted(p.name for p in named.iterdir() if p.is_dir())
    (named / "label_to_text.json").write_text(json.dumps({c: f"A {c} square." for c in classes}))
    own = zeroshot_row(named)
    assert own.prompts == "label_to_text.json"
    assert prompts_column([own]) == "the data's label_to_text.json"
    assert zeroshot_row(colour_folder).prompts == "template"
    assert zeroshot_row(named, **{"data.templates": TWO}).prompts == "label_to_text.json"
    assert zeroshot_row(colour_folder, **{"data.templates": TWO}).prompts == "templates"
    old = Row.from_json({k: v for k, v in own.to_json().items() if k != "prompts"})  # from before
    assert prompts_column([old]).endswith("or label_to_text.json (not recorded)")
    from mamf.report.setup import setup_section

    assert any("which every builder writes" in line for line in setup_section([old], None)[0])
    assert not any("not recorded" in line for line in setup_section([own], None)[0])
