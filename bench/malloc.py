"""Eager CPU steps with glibc's malloc as mamf tunes it, against glibc's defaults (and, when
installed, jemalloc and tcmalloc through LD_PRELOAD), each in fresh processes.

    python bench/malloc.py [--model effnet-minilm] [--repeats 2] [--steps 3]

Workloads: a full training step (batch 32: forward, loss, backward, Adam) through mamf's own step,
and a frozen forward of the image backbone (batch 64, no_grad, eager PyTorch). Per step: wall time,
the share of CPU time spent in the kernel, minor page faults; and each process's peak RSS.
Variants run in turn, each in a process of its own, so noise hits them alike; medians are shown.
On a busy machine wall time mostly measures the other processes; CPU seconds per step (user +
system) and page faults are what the allocator changes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRELOADS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}


def variants() -> dict[str, dict[str, str]]:
    """Environment changes per variant; preloaded allocators only where Debian's are installed."""
    found = {"mamf (mallopt)": {}, "glibc defaults": {"MAMF_MALLOC": "system"}}
    for name, path in PRELOADS.items():
        if Path(path).exists():
            found[name] = {"MAMF_MALLOC": "system", "LD_PRELOAD": path}
    return found


def child(workload: str, model_name: str, folder: str, steps: int) -> None:
    """One process: set up, one warm-up step, then `steps` timed steps; prints a JSON line."""
    import torch
    from common import model_by_name, whole_batch

    from mamf.data.dataset import ImageDataset
    from mamf.engine.training import make_optimizer
    from mamf.features.inputs import ModelInputs
    from mamf.methods.finetune import step, trainable
    from mamf.system.allocator import keep_freed_memory

    KEPT = keep_freed_memory()  # as the CLI does; MAMF_MALLOC=system leaves glibc alone

    model = model_by_name(model_name).eval()
    ds = ImageDataset.load(Path(folder), model.image_size)
    if workload == "train":
        inputs = ModelInputs(model, ds, torch.device("cpu"))
        batch = whole_batch(ds, 32)
        optimizer = make_optimizer(trainable(model), 1e-7)

        def run():
            step(model, inputs, batch, optimizer)
        images = 32
    else:
        pixels = model.preprocess(ds.batch(whole_batch(ds, 64).images))

        def run():
            with torch.no_grad():
                model.image_backbone(pixels)
        images = 64
    run()
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(json.dumps({"step_s": statistics.median(times), "img_s": images / statistics.median(times),
                      "cpu_s": (user + system) / steps, "sys_share": system / (user + system),
                      "faults": (after.ru_minflt - before.ru_minflt) / steps,
                      "peak_rss_mb": after.ru_maxrss / 1024, "mallopt": KEPT}))


def measure(workload: str, env_change: dict, args, folder: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MAMF_MALLOC", "LD_PRELOAD")}
    env.update(env_change)
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--model", args.model,
                          "--folder", str(folder), "--steps", str(args.steps)],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="effnet-minilm")
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per variant")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process")
    ap.add_argument("--workloads", default="train,frozen")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.folder, args.steps)
        return
    import torch
    from common import image_folder

    folder = image_folder(n_classes=10, per_class=12)
    found = variants()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}; "
          f"{args.repeats} processes x {args.steps} steps per variant; load {os.getloadavg()[0]:.2f}")
    for workload in args.workloads.split(","):
        runs = {name: [] for name in found}
        for _ in range(args.repeats):
            for name, change in found.items():
                runs[name].append(measure(workload, change, args, folder))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "mallopt"}
               for name, rs in runs.items()}
        base = med["glibc defaults"]
        what = "training step, batch 32" if workload == "train" else "frozen forward, batch 64"
        print(f"\n{what}")
        print("| allocator | s/step | img/s | CPU s/step | sys share | minor faults/step | "
              "peak RSS MB | speed-up (wall) | CPU time ratio | RSS ratio |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name, m in med.items():
            print(f"| {name} | {m['step_s']:.2f} | {m['img_s']:.1f} | {m['cpu_s']:.2f} | "
                  f"{m['sys_share']:.1%} | {m['faults']:,.0f} | {m['peak_rss_mb']:,.0f} | "
                  f"{base['step_s'] / m['step_s']:.2f} x | {m['cpu_s'] / base['cpu_s']:.2f} | "
                  f"{m['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
    print(f"\nload {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
