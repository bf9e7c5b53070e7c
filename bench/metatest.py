"""Time per test task of the meta-test, split into weight restore, support fine-tuning and scoring;
with --batched, the demo's emoji meta-test one task at a time against the batched meta-test.

    python bench/metatest.py [--models tiny-random-clip,effnet-minilm] [--tasks 20]
    python bench/metatest.py --batched [--data DIR] [--tasks 600]

--batched builds the demo's emoji folder (npm's packages, once, into a temporary folder) unless
--data names one, and runs the demo's meta-test on it: effnet-minilm with both towers frozen,
600 episodic 5-way 1-shot tasks (support Google's drawing, query Twitter's), each fine-tuned
as classical and MAMF do (Adam, metatest.lr 1e-3, 5 epochs, batch 8) and as FOMAML does (SGD at
0.1, one epoch), from the pretrained head (the time of a task does not depend on the weights).
For each it prints both times, "speed-up N.Nx", and how many of the per-task accuracies are
identical. The frozen towers' outputs are computed before either clock starts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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


DEMO = {"model": "effnet-minilm", "train.freeze_image_backbone": True,
        "train.freeze_text_tower": True, "data.protocol": "episodic", "data.shots": 1,
        "data.queries": 1, "data.support_match": "google", "data.query_match": "twitter",
        "metatest.lr": 1e-3, "metatest.epochs": 5, "metatest.batch_size": 8,
        "metatest.inner_lr": 0.1, "metatest.inner_epochs": 1, "metatest.inner_batch_size": 8}


def batched(data: str | None, n_tasks: int) -> None:
    import tempfile

    from mamf.data.builders import build
    from mamf.engine.metatest import meta_test
    from mamf.runs.prepare import prepare

    if data is None:
        data = str(build("emoji", Path(tempfile.mkdtemp(prefix="mamf-bench-")) / "emoji",
                         log=lambda *_: None))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; the demo's emoji "
          f"meta-test: {n_tasks} tasks, 5-way 1-shot, effnet-minilm with both towers frozen")
    for method in ("classical", "fomaml"):
        accs, seconds = {}, {}
        for batch in (False, True):
            config = build_config(overrides={**DEMO, "data.root": data, "data.tasks": n_tasks,
                                             "metatest.batched": batch})
            model, dataset, inputs = prepare(config)
            tasks = evaluation_tasks(dataset, config, "test", 5)
            started = time.perf_counter()
            accs[batch] = meta_test(model, inputs, tasks, method, config, 5, progress=False)
            seconds[batch] = time.perf_counter() - started
        same = sum(a == b for a, b in zip(accs[False], accs[True]))
        print(f"{method:10} one at a time {seconds[False]:6.2f} s, batched {seconds[True]:6.2f} s: "
              f"speed-up {seconds[False] / seconds[True]:.1f}x; per-task accuracies "
              f"{'identical' if same == len(tasks) else 'differ'} ({same} of {len(tasks)} "
              f"identical; mean {np.mean(accs[False]):.4f} and {np.mean(accs[True]):.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-random-clip,effnet-minilm")
    ap.add_argument("--tasks", type=int, default=None,
                    help="test tasks (default 20, with --batched 600)")
    ap.add_argument("--batched", action="store_true",
                    help="the demo's emoji meta-test, one task at a time against batched")
    ap.add_argument("--data", help="with --batched: a built emoji folder (default: build one)")
    args = ap.parse_args()
    if args.batched:
        batched(args.data, args.tasks or 600)
        return
    args.tasks = args.tasks or 20
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
