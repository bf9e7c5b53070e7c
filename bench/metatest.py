"""Time per test task of the meta-test, split into weight restore, support fine-tuning and scoring.

    python bench/metatest.py [--models tiny-random-clip,effnet-minilm] [--tasks 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import image_folder, model_by_name

from mamf.config import build_config
from mamf.data.dataset import ImageDataset
from mamf.engine.metatest import WeightSnapshot, evaluation_tasks, score
from mamf.features.inputs import ModelInputs
from mamf.methods import create


def bench(name: str, n_tasks: int, frozen: bool) -> dict:
    model = model_by_name(name).eval()
    folder = image_folder(n_classes=10, per_class=20)
    config = build_config(overrides={"data.root": str(folder), "model": name,
                                     "metatest.epochs": 5, "metatest.batch_size": 8})
    ds = ImageDataset.load(folder, model.image_size)
    inputs = ModelInputs(model, ds, torch.device("cpu"), freeze_image_backbone=frozen,
                         freeze_text_tower=frozen)
    tasks = evaluation_tasks(ds, config, "test", 5)
    tasks = (tasks * (n_tasks // len(tasks) + 1))[:n_tasks]
    snapshot = WeightSnapshot(model)
    method = create("classical", config)
    parts = {"restore": 0.0, "adapt": 0.0, "score": 0.0}
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        snapshot.restore()
        t1 = time.perf_counter()
        method.adapt(model, inputs, task, np.random.default_rng(i))
        t2 = time.perf_counter()
        score(model, inputs, task)
        t3 = time.perf_counter()
        parts["restore"] += t1 - t0
        parts["adapt"] += t2 - t1
        parts["score"] += t3 - t2
    return {k: v / len(tasks) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="tiny-random-clip,effnet-minilm")
    ap.add_argument("--tasks", type=int, default=20)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 5-way tasks, "
          "5 epochs of Adam on the support set (batch 8), then query scoring")
    print(f"{'model':18} {'towers':8} {'restore ms':>11} {'adapt ms':>9} {'score ms':>9} "
          f"{'restore share':>14}")
    for name in args.models.split(","):
        for frozen in (False, True):
            p = bench(name, args.tasks, frozen)
            total = sum(p.values())
            print(f"{name:18} {'frozen' if frozen else 'trained':8} {p['restore'] * 1e3:11.2f} "
                  f"{p['adapt'] * 1e3:9.1f} {p['score'] * 1e3:9.1f} "
                  f"{p['restore'] / total:14.2%}")


if __name__ == "__main__":
    main()
