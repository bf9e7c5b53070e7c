"""Settings declared by their plug-ins (docs/architecture.md, "Adding a method with a setting")."""

from __future__ import annotations

import json

from config_cases import FIXTURE, cases, record

from mamf.config import Config, to_dict


def test_every_recorded_config_keeps_its_keys_order_defaults_and_config_id():
    before = json.loads(FIXTURE.read_text())
    assert json.dumps(to_dict(Config())) == json.dumps(before["defaults"])
    now = {name: record(config) for name, config in cases()}
    assert now == before["cases"]
