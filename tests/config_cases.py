"""The configs whose settings must not move (`tests/data/config_fixture.json`): the defaults, the
shipped presets, a few overrides of plug-in settings, and the first cells of every committed
experiment. Each is recorded as the sha256 of its `to_dict` in order and its `config_id`, made
once from the code before the plug-ins declared their settings: `python tests/config_cases.py`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "config_fixture.json"
OVERRIDES = [
    {"train.sampler": "confusion", "train.sampler_discount": 0.9, "train.sampler_scale": 2},
    {"train.sampler": "similar", "train.sampler_tau": 0.5},
    {"baseline.coop_lr": 0.01, "baseline.coop_init": "", "baseline.coop_context": 4,
     "baseline.coop_class_specific": "true"},
    {"baseline.tip_alphas": "[1, 2]", "baseline.prototype_mix": 1, "baseline.ape_channels": 0.5,
     "baseline.gda_alphas": "0.1,1", "baseline.lpp_epochs": 10, "baseline.taskres_scale": 1},
    {"train.unfreeze_image_blocks": "all", "train.augment": False, "metatest.augment": False},
    {"data.protocol": "episodic", "data.shots": 5, "train.method": "fomaml"},
]


def cases():
    """(name, Config) of every recorded config."""
    from mamf.api import preset
    from mamf.catalogue import Config
    from mamf.config import build_config
    from mamf.runs.experiment_file import load_experiment, run_config, samplers_of

    yield "defaults", Config()
    yield "built defaults", build_config({})
    yield "preset cpu", build_config(preset("cpu"))
    # clip-lora's k x shots steps need a protocol that trains on K shots a class (issue 42)
    yield "preset clip-lora, coop", build_config(preset("clip-lora"),
                                                 {"data.protocol": "coop"})
    yield "preset official-baselines", build_config(preset("official-baselines"))
    for i, over in enumerate(OVERRIDES):
        yield f"overrides {i}", build_config(overrides=over)
    files = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src/mamf/configs/demo.yaml"]
    for path in files:
        exp = load_experiment(path)
        for ds in exp.datasets[:2]:
            for method in exp.methods:
                for sampler in samplers_of(exp, ds, method)[:2]:
                    yield (f"{path.name} {ds.name} {method} {sampler}",
                           run_config(exp, ds, method, exp.seeds[0], "/placeholder",
                                      sampler=sampler))


def record(config) -> dict:
    from mamf.config import to_dict
    from mamf.runs.config_id import config_id

    text = json.dumps(to_dict(config))  # in order: the keys' order is part of what is kept
    return {"dict_sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
            "config_id": config_id(config)}


if __name__ == "__main__":
    from mamf.catalogue import Config
    from mamf.config import to_dict

    recorded = {name: record(config) for name, config in cases()}
    FIXTURE.write_text(json.dumps({"defaults": to_dict(Config()), "cases": recorded},
                                  indent=1) + "\n")
    print(f"{len(recorded)} configs recorded in {FIXTURE}")
