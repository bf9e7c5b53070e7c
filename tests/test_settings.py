"""Settings declared by their plug-ins (docs/architecture.md, "Adding a method with a setting")."""

from __future__ import annotations

import importlib
import json
import pickle
import sys

import pytest
from config_cases import FIXTURE, OVERRIDES, cases, record

from mamf import methods
from mamf.catalogue import Config, Setting, declared
from mamf.cli import main, methods_listing
from mamf.config import build_config, to_dict
from mamf.methods.base import unregister
from mamf.runs.config_id import FIRST_SETTINGS, config_id
from mamf.system.errors import MamfError
from mamf.tasks import samplers


def test_every_recorded_config_keeps_its_keys_order_defaults_and_config_id():
    before = json.loads(FIXTURE.read_text())
    assert json.dumps(to_dict(Config())) == json.dumps(before["defaults"])
    now = {name: record(config) for name, config in cases()}
    assert now == before["cases"]


TOY = '''
"""A method with one setting, in a file of its own (tests/test_settings.py)."""
from mamf.methods.base import ModelScorer, TestTimeMethod, register
from mamf.methods.presentation import Presentation
from mamf.catalogue import Setting


@register
class Toy(TestTimeMethod):
    name = "toy"
    presentation = Presentation(label="Toy", order=99,
                                description="zero-shot, noting the scale it was given (a test's method)")
    only_when_named = True
    settings = (Setting("baseline.toy_scale", float, 2.0, "how far the toy scales", minimum=0),)
    seen = []

    def adapt(self, model, inputs, task, rng):
        Toy.seen.append(self.config.baseline.toy_scale)
        return ModelScorer(model, inputs, task)
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """`toy`, registered from a module in a temporary folder, and unregistered afterwards."""
    (tmp_path / "toy_method.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_method")
    yield module.Toy
    unregister("toy")
    sys.modules.pop("toy_method")


def test_a_method_declares_its_setting_in_its_own_file(toy_method, colour_folder, tmp_path):
    config = build_config(overrides={"baseline.toy_scale": "3"})  # the command line's text
    assert config.baseline.toy_scale == 3.0 and isinstance(config.baseline.toy_scale, float)
    assert to_dict(build_config({}))["baseline"]["toy_scale"] == 2.0  # its default, in the dict
    assert list(to_dict(build_config({}))["baseline"])[-1] == "toy_scale"  # after the others
    with pytest.raises(MamfError, match=r"^config baseline.toy_scale must be a finite number"):
        build_config(overrides={"baseline.toy_scale": "big"})
    with pytest.raises(MamfError) as refused:
        build_config({"baseline": {"toy_scale": -1}})
    assert str(refused.value) == "config baseline.toy_scale must not be negative, got -1.0"
    assert "baseline.toy_scale = 2.0 (>= 0): how far the toy scales" in methods_listing()
    # the command line's --set reaches the method
    assert main(["evaluate", "--model", "tiny-random-clip", "--data", str(colour_folder),
                 "--out", str(tmp_path / "out"), "--method", "toy", "--ways", "2", "--quiet",
                 "--set", "baseline.toy_scale=0.5"]) == 0
    assert toy_method.seen and set(toy_method.seen) == {0.5}
    # a config that sets a baseline's value keeps the settings' hash it had before toy existed
    recorded = json.loads(FIXTURE.read_text())["cases"]["overrides 2"]["config_id"]
    assert config_id(build_config(overrides=OVERRIDES[2])) == recorded
    assert config_id(build_config(overrides={**OVERRIDES[2], "baseline.toy_scale": 1})) != recorded


def test_settings_added_since_rows_were_first_written_leave_older_hashes_alone():
    """`config_id` hashes the first settings at any value and every later one only away from
    its default: the first settings are a fixed list, all of them still declared and recorded in
    the fixture's defaults, so no new declaration can change an older row's hash."""
    before = json.loads(FIXTURE.read_text())["defaults"]
    recorded = {f"{section}.{k}" for section, keys in before.items() if isinstance(keys, dict)
                for k in keys} | {k for k, v in before.items() if not isinstance(v, dict)}
    assert set(declared()) >= FIRST_SETTINGS and recorded >= FIRST_SETTINGS
    later = [k for k in declared() if k not in FIRST_SETTINGS]
    assert "train.adapter" in later and "data.split_file" in later


def test_without_the_plug_in_its_setting_is_an_unknown_key():
    with pytest.raises(MamfError, match=r"unknown config key 'baseline.toy_scale' in section "
                                        r"'baseline' \(known: ape_alphas, ape_betas, "):
        build_config(overrides={"baseline.toy_scale": 1})


def test_a_key_declared_twice_or_outside_a_section_is_refused(monkeypatch):
    class Twice(methods.Method):
        settings = (Setting("baseline.coop_lr", float, 1.0),)

    class Loose(methods.Method):
        settings = (Setting("loose", float, 1.0),)

    for name, kind, message in (("twice", Twice, "declared twice"),
                                ("loose", Loose, "not in a section")):
        monkeypatch.setitem(methods.REGISTRY, name, kind)
        with pytest.raises(ValueError, match=message):
            build_config({})
        monkeypatch.delitem(methods.REGISTRY, name)


def test_sections_keep_their_names_and_pickle():
    from mamf.catalogue import TrainConfig

    assert TrainConfig(adapter="lora").lr == 1e-6
    config = build_config(overrides={"train.sampler": "confusion", "baseline.coop_lr": 0.1})
    assert pickle.loads(pickle.dumps(config)) == config
    assert type(config.train).__name__ == "TrainConfig"


def test_the_default_sampler_is_the_registrys():
    assert build_config({}).train.sampler == samplers.DEFAULT_SAMPLER in samplers.names()


def test_protocols_and_models_declare_settings_as_methods_do(monkeypatch):
    from mamf import protocols
    from mamf.models import registry

    class Margined(protocols.Protocol):
        name = "margined"
        settings = (Setting("data.margin", int, 3, "images kept apart", minimum=1),)

    monkeypatch.setitem(protocols.REGISTRY, "margined", Margined)
    monkeypatch.setattr(registry, "_BUILTIN", dict(registry._BUILTIN))
    monkeypatch.setattr(registry, "DECLARED", dict(registry.DECLARED))
    registry.register_builtin("deep-toy", "a test's model", settings=(
        Setting("train.toy_depth", int, 2, "blocks of the toy", minimum=1),))(
        lambda: None)
    config = build_config(overrides={"data.protocol": "margined", "train.toy_depth": "4"})
    assert (config.data.margin, config.train.toy_depth) == (3, 4)
    assert list(to_dict(config)["data"])[-1] == "margin"  # at the end of its section
    with pytest.raises(MamfError, match="^config data.margin must be at least 1, got 0$"):
        build_config(overrides={"data.margin": 0})
    listing = methods_listing()
    assert "data.margin = 3 (>= 1): images kept apart" in listing
    assert "train.toy_depth = 2 (>= 1): blocks of the toy" in listing
