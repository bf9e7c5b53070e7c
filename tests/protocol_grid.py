"""A tiny grid of every protocol (tiny random models, generated images), and the measured part of
its rows: `tests/data/protocol_rows.json` holds what it gave before the protocols became plug-ins,
and `test_protocol_rows.py` checks the code still gives exactly that.

Regenerate the fixture (only when numbers are meant to change):
    PYTHONPATH=src OMP_NUM_THREADS=1 python tests/protocol_grid.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

FIXTURE = Path(__file__).parent / "data" / "protocol_rows.json"

# what depends on the machine or the clock, not on the code's numbers
UNSTABLE = {"host", "time_s", "train_time_s", "date", "mamf", "mamf_commit", "torch",
            "transformers", "peft", "onnxruntime", "python", "device", "threads", "denormals",
            "config_id",
            "run"}

METHODS = ["zeroshot", "tip-adapter", "mamf", "fomaml"]
PROTOCOLS = {
    "paper": {"data": {"protocol": "paper", "train_match": "img_00"}},
    "episodic": {"data": {"protocol": "episodic", "shots": 1, "queries": 2, "tasks": 3, "ways": 2,
                             "class_split": [0.5, 0.25, 0.25]}},
    "coop": {"data": {"protocol": "coop", "shots": 2, "ways": 3}},
    "base2novel": {"data": {"protocol": "base2novel", "shots": 2, "ways": 3}},
}


def grid_rows(folder: Path, out: Path, protocols: list[str] | None = None) -> list[dict]:
    """Every protocol (or those named) x METHODS x one seed on `folder`, each row stripped to its
    measurement."""
    from mamf.runs.experiment import load_experiment, run_experiment

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, settings in PROTOCOLS.items():
        if protocols is not None and name not in protocols:
            continue
        # native: the fixture predates budgets (experiments now default to matched ones)
        merged = {"train": {"steps": 2, "meta_batch": 2, "freeze_image_backbone": True,
                            "freeze_text_tower": True, "budget": "native"},
                  "metatest": {"epochs": 1}, **settings}
        ways = {"ways": [3]} if name == "paper" else {"ways": [2]} if name == "episodic" else {}
        raw = {"name": name, "model": "tiny-random-clip", "methods": METHODS, "seeds": [1],
               "settings": merged, "datasets": {"colours": {"root": str(folder), **ways}}}
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        for row in run_experiment(load_experiment(path), out / name, progress=False):
            rows.append({k: v for k, v in sorted(row.to_json().items()) if k not in UNSTABLE})
    return rows


def main() -> None:
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_folder

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["MAMF_CACHE_DIR"] = str(tmp / "cache")
        folder = make_folder(tmp / "colours", n_classes=8, per_class=12)
        rows = grid_rows(folder, tmp)
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    print(f"{len(rows)} rows -> {FIXTURE}")


if __name__ == "__main__":
    main()
