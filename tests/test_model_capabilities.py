"""`DualEncoder`'s required methods and capability mixins: what each family declares, a family
missing a required method, and a setting that needs a capability the model lacks (one line)."""

from __future__ import annotations

import pytest
import yaml
from conftest import one_error_line

from mamf.cli import main
from mamf.config import build_config
from mamf.models import adapters, load_model, registry
from mamf.models.base import (
    DualEncoder,
    ProjectionHeads,
    PromptLearnable,
    SplitImageTower,
    SplitTextTower,
    TransformersForm,
    TransformersTokenizer,
    capabilities,
)
from mamf.models.effnet_minilm import EffnetMiniLM
from mamf.models.hf_clip import HFClip
from mamf.models.siglip import HFSiglip
from mamf.system.errors import MamfError

EVERY = {SplitImageTower, SplitTextTower, PromptLearnable, ProjectionHeads, TransformersTokenizer,
         TransformersForm}
# each registered name (built-in models, transformers families) and what its family supports
SUPPORTED = {
    "tiny-random-clip": EVERY,
    "clip": EVERY,
    "tiny-random-siglip": EVERY - {ProjectionHeads},  # its towers pool and project themselves
    "siglip": EVERY - {ProjectionHeads},
    "effnet-minilm": EVERY - {TransformersForm},  # two libraries' towers: ONNX exports only
}
CLASSES = {"clip": HFClip, "siglip": HFSiglip, "effnet-minilm": EffnetMiniLM}


def test_every_registered_family_declares_its_capabilities():
    assert set(registry.names()) == set(SUPPORTED)  # a new family is added here
    for name, expected in SUPPORTED.items():
        if name in CLASSES:  # folders to load, or the offline extra: the class says it
            assert issubclass(CLASSES[name], DualEncoder)
            assert not CLASSES[name].__abstractmethods__, name  # it can be made
            assert set(capabilities(CLASSES[name])) == expected, name
        else:
            model = load_model(name)
            assert {c for c in EVERY if isinstance(model, c)} == expected, name
            assert set(capabilities(model)) == expected


class Plain(DualEncoder):
    """A family with the required methods alone: the tiny CLIP's towers, nothing optional."""

    lora_targets = ("q_proj", "k_proj", "v_proj")

    def __init__(self):
        super().__init__()
        tiny = load_model("tiny-random-clip")
        self.clip, self.tokenizer = tiny.clip, tiny.tokenizer
        self.image_size, self.image_mean, self.image_std = 32, (0.5,) * 3, (0.5,) * 3
        self.log_logit_scale = self.clip.logit_scale

    def tokenize(self, texts):
        tokens = self.tokenizer(list(texts))
        return {k: v.to(self.log_logit_scale.device) for k, v in tokens.items()}

    def image_backbone(self, pixel_values):
        return self.clip.vision_model(pixel_values=pixel_values).pooler_output

    def image_backbone_parameters(self):
        return self.clip.vision_model.parameters()

    def image_head(self, features):
        return self.clip.visual_projection(features)

    def encode_texts(self, tokens):
        return self.clip.text_projection(self.clip.text_model(**tokens).pooler_output)

    def text_parameters(self):
        return [*self.clip.text_model.parameters(), *self.clip.text_projection.parameters()]

    def describe(self):
        return {"name": "tiny-plain"}


def test_a_family_missing_a_required_method_cannot_be_made():
    class Half(DualEncoder):
        def tokenize(self, texts):
            return {}

    with pytest.raises(TypeError, match="abstract") as caught:
        Half()
    assert _named(caught.value) == {"describe", "encode_texts", "image_backbone",
                                    "image_backbone_parameters", "image_head", "text_parameters"}
    assert capabilities(Plain) == ()
    Plain()  # the required methods are all it takes


def test_a_capability_declared_is_a_capability_implemented():
    class Claims(Plain, SplitTextTower):
        def text_layers(self):
            return 2

    with pytest.raises(TypeError, match="abstract") as caught:
        Claims()
    assert _named(caught.value) == {"text_bottom", "text_top", "text_top_parameters"}


def _named(error: TypeError) -> set[str]:
    """The methods Python's message names (3.11: `methods a, b`; 3.12: `methods 'a', 'b'`)."""
    listed = str(error).rsplit("methods", 1)[1]
    return {name.strip(" '\"") for name in listed.split(",")}


@pytest.fixture
def plain(monkeypatch):
    """`tiny-plain`, the `Plain` family, registered for the test."""
    monkeypatch.setattr(registry, "_BUILTIN", dict(registry._BUILTIN))
    monkeypatch.setattr(registry, "DECLARED", dict(registry.DECLARED))
    registry.register_builtin("tiny-plain", "a test's family with no capability")(Plain)
    return "tiny-plain"


def _train(folder, out, *extra, method="classical"):
    return main(["train", "--method", method, "--model", "tiny-plain", "--data", str(folder),
                 "--out", str(out), "--steps", "2", "--batch-size", "6", "--quiet", *extra])


@pytest.mark.parametrize("extra,line", [
    (("--set", "train.heads=random"),
     "train.heads=random cannot go with model tiny-plain: Plain has no projection heads"),
    (("--set", "train.unfreeze_image_blocks=1", "--set", "train.augment=false"),
     "train.unfreeze_image_blocks=1: Plain's image tower cannot be partially unfrozen (use 0 or "
     "all)"),
    (("--set", "train.unfreeze_text_layers=1"),
     "train.unfreeze_text_layers=1: Plain's text tower cannot be partially unfrozen (use 0 or "
     "all)"),
    # LoRA sets its layers before the inputs are made: the same line, from there
    (("--set", "train.adapter=lora", "--set", "train.unfreeze_text_layers=1"),
     "train.unfreeze_text_layers=1: Plain's text tower cannot be partially unfrozen (use 0 or "
     "all)"),
])
def test_a_setting_the_family_cannot_serve_is_one_line(plain, colour_folder, tmp_path, capsys,
                                                       extra, line):
    assert _train(colour_folder, tmp_path / "run", *extra) != 0
    assert one_error_line(capsys) == f"mamf: error: {line}"


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_prompt_learning_without_input_embeddings_is_one_line(plain, colour_folder, tmp_path,
                                                              capsys, method):
    assert _train(colour_folder, tmp_path / "run", method=method) != 0
    assert one_error_line(capsys) == (f"mamf: error: {method} needs a text tower that takes "
                                      "input embeddings: Plain's text tower cannot take input "
                                      "embeddings")


def test_the_required_methods_train_and_the_exports_say_what_is_missing(plain, colour_folder,
                                                                        tmp_path, capsys):
    assert _train(colour_folder, tmp_path / "run") == 0
    capsys.readouterr()
    for fmt, line in (("hf", "--format hf cannot export model 'tiny-plain' (use --format onnx): "
                             "Plain has no standard transformers form (its towers are not one "
                             "transformers model)"),
                      ("onnx", "model 'tiny-plain' cannot be exported: Plain has no transformers "
                               "tokenizer")):
        assert main(["export", str(tmp_path / "run"), "--format", fmt, "--out",
                     str(tmp_path / fmt)]) != 0
        assert one_error_line(capsys) == f"mamf: error: {line}"
        assert not (tmp_path / fmt).exists()


def test_random_heads_on_lora_without_heads_is_refused_where_the_adapters_go_on():
    """An experiment attaches adapters before it draws a run's heads: the line comes from there
    (it was a NotImplementedError's traceback)."""
    train = build_config({"train": {"adapter": "lora", "heads": "random"}}).train
    with pytest.raises(MamfError, match=r"^train.heads=random cannot go with model "
                                        r"tiny-random-siglip: HFSiglip has no projection heads$"):
        adapters.attach(load_model("tiny-random-siglip"), train, seed=0)
    model = load_model("tiny-random-clip")
    adapters.attach(model, train, seed=0)
    assert all(p.requires_grad for p in model.head_parameters())


def test_prolip_without_projection_heads_is_one_line(plain, colour_folder, tmp_path, capsys):
    assert main(["evaluate", "--method", "prolip", "--model", "tiny-plain", "--data",
                 str(colour_folder), "--out", str(tmp_path / "eval"), "--ways", "2",
                 "--quiet"]) != 0
    assert one_error_line(capsys) == ("mamf: error: prolip needs a projection head to fine-tune: "
                                      "Plain has no projection heads")


@pytest.mark.parametrize("tune", [False, True])
def test_an_experiment_refuses_a_method_its_model_cannot_serve_before_training(
        plain, colour_folder, tmp_path, capsys, monkeypatch, tune):
    """CoOp listed after classical on a family without input embeddings: the line comes as the
    model is first ready, before classical trains (it came after classical's runs, or its
    tuning, had been paid for)."""
    from mamf.engine import training
    from mamf.runs import experiment

    trained = []
    for module in (training, experiment):  # tuning imports it when it runs
        monkeypatch.setattr(module, "train", lambda *a, **k: trained.append(1) or 1 / 0)
    raw = {"name": "plain", "model": "tiny-plain", "methods": ["classical", "coop"],
           "seeds": [1],
           "settings": {"train": {"epochs": 1, "augment": False}, "metatest": {"epochs": 0}},
           "datasets": {"colours": {"root": str(colour_folder), "ways": [2]}}}
    if tune:
        raw["tune"] = {"seed": [5, 6], "grid": {"train.lr": [1e-3, 1e-2]},
                       "asymmetric": "the test checks a refusal, not a choice"}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["experiment", str(path), "--out", str(tmp_path / "out"), "--quiet"]) != 0
    assert one_error_line(capsys) == ("mamf: error: coop needs a text tower that takes input "
                                      "embeddings: Plain's text tower cannot take input "
                                      "embeddings")
    assert not trained
