"""Peak memory and time as the dataset grows (1x, 4x, 16x images): memory flat, time linear in
the work done.

    python bench/scale.py [--base 150]

Each size runs in a fresh process (so peak RSS is its own): build the uint8 cache, then one epoch
of classical fine-tuning of tiny-random-clip over the training pool and 20 test tasks.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, os
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, sys.argv[3])
from conftest import make_folder
from pathlib import Path
from mamf.config import build_config
from mamf.runs.prepare import prepare
from mamf.engine.training import train
from mamf.engine.metatest import evaluation_tasks, meta_test
root = Path(sys.argv[1]); per_class = int(sys.argv[2])
folder = make_folder(root / "data", n_classes=10, per_class=per_class, size=64)
os.environ["MAMF_CACHE_DIR"] = str(root / "cache")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
config = build_config(overrides={"model": "tiny-random-clip", "data.root": str(folder),
                                 "train.method": "classical", "train.epochs": 1,
                                 "train.lr": 1e-3, "metatest.lr": 1e-3, "metatest.epochs": 1})
from mamf.models import load_model
model = load_model("tiny-random-clip")
t0 = time.perf_counter()
model, ds, inputs = prepare(config, model)
t1 = time.perf_counter()
result = train(model, inputs, ds, config, progress=False)
t2 = time.perf_counter()
tasks = evaluation_tasks(ds, config, "test", 5)[:20]
task_images = sum(len(t.support) + len(t.query) for t in tasks)
meta_test(model, inputs, tasks, "classical", config, 5, progress=False)
t3 = time.perf_counter()
print(json.dumps({"images": len(ds.images), "steps": result.steps, "cache_s": t1 - t0,
                  "train_s": t2 - t1, "metatest_s": t3 - t2, "task_images": task_images,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_mb": base / 1024}))
"""


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--base", type=int, default=300, help="images at 1x (10 classes)")
    args = ap.parse_args()
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    print(f"{'size':>5} {'images':>7} {'peak RSS MB':>12} {'cache s':>8} {'cache ms/img':>13} "
          f"{'steps':>6} {'train ms/step':>14} {'20 tasks s':>11} {'ms/task image':>14}")
    for factor in (1, 4, 16):
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-c", CHILD, tmp, str(args.base * factor // 10),
                                  tests], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{factor:>4}x {r['images']:7d} {r['rss_mb']:12.0f} {r['cache_s']:8.2f} "
              f"{r['cache_s'] / r['images'] * 1e3:13.2f} {r['steps']:6d} "
              f"{r['train_s'] / r['steps'] * 1e3:14.1f} {r['metatest_s']:11.2f} "
              f"{r['metatest_s'] / r['task_images'] * 1e3:14.2f}")


if __name__ == "__main__":
    main()
