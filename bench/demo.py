"""Where `mamf demo`'s time goes, from an empty cache: data, model, image cache, frozen
features, rows.

    python bench/demo.py [--sample 128] [--repeats 3] [--config demo.yaml]

Part 1 runs the demo's own experiment (the shipped demo.yaml; its data built into a temporary
folder, MAMF_CACHE_DIR empty) in this process and times each stage where the library does it:
building each dataset, building the model (cold: the first build converts and embeds, then
cached; it runs in a background thread while the data is built, and is shown beside the stages),
decoding the image cache, the frozen towers' outputs, and the rows (each method's
training and meta-test, from the rows' own `train_time_s` and `time_s`). What no stage claims
(setting a row up, prompt similarities, the report) is "other".

Part 2, side by side (interleaved) in one run, on `--sample` of the demo's own cached emoji
images: the frozen image backbone by mamf's path (uint8 cache, preprocessing, onnxruntime), by
eager PyTorch (no_grad) and by onnxruntime directly (the same graph, pixels in memory), each as
a share of the machine's float32 matmul rate; and the whole feature pass extrapolated from the
sample against the time part 1 measured.

The machine is shared: part 1's seconds move with the load (printed); the ratios of part 2 much
less.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mamf.results import Row

# the counting builder's worker processes start by running this file again, as "__mp_main__":
# they need none of the rest, and importing torch there adds seconds `mamf demo` never spends
if __name__ == "__main__":
    os.environ.setdefault("MAMF_CACHE_DIR", tempfile.mkdtemp(prefix="mamf-bench-demo-cache-"))

    import torch
    from common import interleaved
    from frozen import backbone_contenders, backbone_flops
    from hardware import matmul_rate

    from mamf.features import frozen_engine, inputs
    from mamf.runs import experiment, prepare

STAGES: dict[str, float] = defaultdict(float)


def timed_stage(module, name: str, stage: str) -> None:
    """Wrap `module.name` so its calls add their seconds to STAGES[stage]."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            STAGES[stage] += time.perf_counter() - started

    setattr(module, name, wrapper)


def stage_of_dataset(original):
    """`dataset_root` builds a dataset: its seconds go to 'data: <name>'."""
    def wrapper(ds, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(ds, *args, **kwargs)
        finally:
            STAGES[f"build data: {ds.name}"] += time.perf_counter() - started
    return wrapper


BACKGROUND = "model build, in a background thread while the data is built"


def whole_demo(config: Path, out: Path) -> tuple[list[dict], float]:
    from mamf.models import effnet_minilm

    experiment.dataset_root = stage_of_dataset(experiment.dataset_root)
    timed_stage(effnet_minilm, "_build", BACKGROUND)  # overlaps the stages, not counted in them
    timed_stage(prepare, "build_model", "model build (what the rows wait for it, then a copy)")
    timed_stage(prepare.ImageDataset, "load", "image cache (decode, resize)")
    timed_stage(inputs.ModelInputs, "_backbone_features", "frozen image features")
    timed_stage(inputs.ModelInputs, "_text_embeddings", "frozen text embeddings")
    started = time.perf_counter()
    rows = experiment.run_experiment(experiment.load_experiment(config), out, progress=False)
    return rows, time.perf_counter() - started


def report_stages(rows: list[Row], wall: float) -> None:
    # ModelInputs' own time minus the frozen parts would be negligible; the stages nest only
    # where the image cache is read inside the frozen features (it is not: load decodes it)
    by_method = defaultdict(lambda: [0.0, 0.0, 0])
    seen_units = set()
    for r in rows:
        key = (r.experiment_dataset, r.method)
        by_method[key][1] += r.time_s
        by_method[key][2] += 1
        unit = (key, r.train_time_s, r.train_steps)
        if r.train_time_s is not None and unit not in seen_units:
            seen_units.add(unit)
            by_method[key][0] += r.train_time_s
    print(f"mamf demo from an empty cache: {wall:.1f} s wall, load {os.getloadavg()[0]:.2f}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| stage | s | share |")
    print("|---|---|---|")
    accounted = 0.0
    for stage, seconds in STAGES.items():
        if stage != BACKGROUND:
            accounted += seconds
            print(f"| {stage} | {seconds:.1f} | {seconds / wall:.0%} |")
    for (ds, method), (train_s, test_s, n) in by_method.items():
        accounted += train_s + test_s
        print(f"| rows: {ds} {method} ({n}): training | {train_s:.1f} | {train_s / wall:.0%} |")
        print(f"| rows: {ds} {method} ({n}): meta-test | {test_s:.1f} | {test_s / wall:.0%} |")
    other = wall - accounted
    print(f"| other (row set-up, prompt similarities, report) | {other:.1f} | {other / wall:.0%} |")
    print(f"(beside these: {BACKGROUND}, {STAGES[BACKGROUND]:.1f} s)")


def feature_rates(out: Path, sample: int, repeats: int, whole_s: float) -> None:
    """mamf's frozen-backbone path against eager PyTorch and onnxruntime directly, on a sample of
    the demo's own emoji images."""

    from mamf.data.dataset import ImageDataset
    from mamf.models import load_model

    model = load_model("effnet-minilm").eval()
    folder = sorted(p for p in (out / "data").iterdir() if not p.name.startswith("."))[-1]
    ds = ImageDataset.load(folder, model.image_size)  # emoji in the demo
    n = min(sample, len(ds.images))
    ds.images = ds.images[:n]
    mine = inputs.ModelInputs(model, ds, torch.device("cpu"))
    ours = frozen_engine.onnx_backbone(model, frozen_engine.weights_digest(model))
    times = interleaved(backbone_contenders(model, ds, mine, ours), repeats)
    f32 = matmul_rate(torch.float32)
    flops = backbone_flops(model)
    total = len(ImageDataset.load(folder, model.image_size).images)
    print(f"\nfrozen image backbone on {n} of the demo's {folder.name} images ({flops / 1e9:.2f} GFLOP "
          f"each), float32 matmul {f32 / 1e9:.1f} GFLOP/s, load {os.getloadavg()[0]:.2f}")
    print(f"| variant | img/s | share of the matmul rate | vs mamf | {folder.name}'s "
          f"{total} images at this rate, s |")
    print("|---|---|---|---|---|")
    for name, seconds in times.items():
        rate = n / seconds
        print(f"| {name} | {rate:.1f} | {rate * flops / f32:.0%} | "
              f"{times['mamf'] / seconds:.2f} x | {total / rate:.1f} |")
    print(f"(part 1's frozen image features, both datasets: {whole_s:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=Path(experiment.__file__).parent / "configs"
                    / "demo.yaml")
    ap.add_argument("--sample", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="mamf-bench-demo-"))
    rows, wall = whole_demo(args.config, out)
    report_stages(rows, wall)
    feature_rates(out, args.sample, args.repeats, STAGES["frozen image features"])


if __name__ == "__main__":
    main()
