"""Meta-test and training throughput on 1 process against 2 torchrun processes, side by side.

    python bench/distributed.py [--models tiny-random-clip,effnet-minilm] [--repeats 2]
    python bench/distributed.py --train [--models effnet-minilm] [--steps 10]

Each configuration runs `mamf evaluate` on the same generated folder, model and tasks:
  1 process, 2 threads   the default single-process run (torch uses both cores)
  1 process, 1 thread    the per-core baseline
  2 processes x 1 thread `torchrun --nproc_per_node=2`, tasks sharded across the ranks
Tasks per second come from the meta-test time the results row records (rank 0 waits for the
gather, so the slower rank counts); wall seconds include start-up. With --train it is
`mamf train --method classical` (global batch 32) and steps per second from train.json.
Configurations alternate, medians over repeats; a first untimed run fills the image cache.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import image_folder

from mamf.results import read_rows

CONFIGS = {
    "1 process, 2 threads": (1, 2),
    "1 process, 1 thread": (1, 1),
    "2 processes x 1 thread": (2, 1),
}


def launch(args: list[str], processes: int, threads: int) -> float:
    """Run `mamf args` on `processes` processes; returns wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
             f"--nproc_per_node={processes}", "-m", "mamf"] if processes > 1
            else [sys.executable, "-m", "mamf"])
    started = time.perf_counter()
    done = subprocess.run([*head, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - started


def run(model: str, folder: Path, ways: str, processes: int, threads: int) -> tuple[float, float]:
    """Meta-test: (tasks per second, wall seconds)."""
    out = Path(tempfile.mkdtemp(prefix="mamf-bench-dist-"))
    wall = launch(["evaluate", "--model", model, "--data", str(folder), "--ways", ways, "--out",
                   str(out), "--quiet", "--device", "cpu", "--set", "metatest.lr=1e-5",
                   "--set", "metatest.epochs=5"], processes, threads)
    rows = read_rows(out / "results.jsonl")
    tasks = sum(r.n_tasks for r in rows)
    return tasks / sum(r.time_s for r in rows), wall


def run_train(model: str, folder: Path, steps: int, processes: int,
              threads: int) -> tuple[float, float]:
    """Classical training: (steps per second, wall seconds)."""
    out = Path(tempfile.mkdtemp(prefix="mamf-bench-dist-")) / "run"
    wall = launch(["train", "--method", "classical", "--model", model, "--data", str(folder),
                   "--out", str(out), "--quiet", "--device", "cpu", "--steps", str(steps),
                   "--batch-size", "32", "--lr", "1e-6"], processes, threads)
    summary = json.loads((out / "train.json").read_text())
    return summary["steps"] / summary["train_time_s"], wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny-random-clip,effnet-minilm")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="time training instead of the meta-test")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    folder = image_folder(n_classes=10, per_class=20)
    unit = "steps/s" if args.train else "tasks/s"
    print(f"| model | work | configuration | {unit} | wall s | vs 1 process, 2 threads |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        run(model, folder, "2", 1, 2)  # fills the image cache
        if args.train:
            work = f"classical, {args.steps} steps of 32"
            measure = functools.partial(run_train, model, folder, args.steps)
        else:
            work = "meta-test, all ways"
            measure = functools.partial(run, model, folder, "all")
        results: dict[str, list] = {name: [] for name in CONFIGS}
        for _ in range(args.repeats):
            for name, (processes, threads) in CONFIGS.items():
                results[name].append(measure(processes, threads))
        base = statistics.median(r[0] for r in results["1 process, 2 threads"])
        for name, runs in results.items():
            rate = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            print(f"| {model} | {work} | {name} | {rate:.2f} | {wall:.1f} | {rate / base:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
