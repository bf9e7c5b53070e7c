"""Meta-test throughput on 1 process against 2 torchrun processes, side by side on this machine.

    python bench/distributed.py [--models tiny-random-clip,effnet-minilm] [--repeats 2]

Each configuration runs `mamf evaluate` on the same generated folder, model and tasks:
  1 process, 2 threads   the default single-process run (torch uses both cores)
  1 process, 1 thread    the per-core baseline
  2 processes x 1 thread `torchrun --nproc_per_node=2`, tasks sharded across the ranks
Tasks per second come from the meta-test time the results row records (rank 0 waits for the
gather, so the slower rank counts); wall seconds include start-up. Configurations alternate,
medians over repeats; a first untimed run fills the image cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import image_folder

CONFIGS = {
    "1 process, 2 threads": (1, 2),
    "1 process, 1 thread": (1, 1),
    "2 processes x 1 thread": (2, 1),
}


def run(model: str, folder: Path, ways: str, processes: int, threads: int) -> tuple[float, float]:
    out = Path(tempfile.mkdtemp(prefix="mamf-bench-dist-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "mamf"] if processes > 1
              else [sys.executable, "-m", "mamf"])
    args = ["evaluate", "--model", model, "--data", str(folder), "--ways", ways, "--out",
            str(out), "--quiet", "--device", "cpu", "--set", "metatest.lr=1e-5",
            "--set", "metatest.epochs=5"]
    started = time.perf_counter()
    done = subprocess.run([*launch, *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    tasks = sum(r["n_tasks"] for r in rows)
    return tasks / sum(r["time_s"] for r in rows), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny-random-clip,effnet-minilm")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    folder = image_folder(n_classes=10, per_class=20)
    print("| model | tasks | configuration | tasks/s | wall s | speed-up vs 1 process, 2 threads |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        ways = "all"
        run(model, folder, "2", 1, 2)  # fills the image cache
        results: dict[str, list] = {name: [] for name in CONFIGS}
        for _ in range(args.repeats):
            for name, (processes, threads) in CONFIGS.items():
                results[name].append(run(model, folder, ways, processes, threads))
        base = statistics.median(r[0] for r in results["1 process, 2 threads"])
        for name, runs in results.items():
            rate = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            print(f"| {model} | {ways}-way | {name} | {rate:.2f} | {wall:.1f} | "
                  f"{rate / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
