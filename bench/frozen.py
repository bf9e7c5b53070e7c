"""Frozen towers: how fast their outputs are computed once, and what caching them saves per step.

    python bench/frozen.py [--model effnet-minilm] [--images 128] [--prompts 512] [--repeats 3]

Part 1, measured side by side (interleaved) in one run: the image backbone's outputs for
`--images` cached images in chunks of 64 by eager PyTorch (no_grad), by mamf's own path (uint8
cache, preprocessing and the engine mamf picks: onnxruntime on the CPU), and by onnxruntime
directly (the same exported graph, onnxruntime's default session, pixels already in memory), with
the machine's float32 matmul rate and each variant's share of it.

Part 2, the same for the frozen text tower: `--prompts` ImageNet class prompts' embeddings in
chunks of 64 by mamf's chunk loop over eager PyTorch (`model.encode_texts`, no_grad: the path
without onnxruntime), by the same loop over mamf's engine (the exported `encode_texts` on
onnxruntime; tokens cut per chunk and converted each call) and by onnxruntime directly (the same
graph, default session, the chunks' tokens already in numpy). Opening the cached graph, a one-off
per run, is timed apart.

Part 3: a training step of the image head and logit scale (image backbone and text tower frozen),
the frozen outputs recomputed every step against computed once and cached.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from common import image_folder, interleaved, model_by_name, whole_batch
from hardware import matmul_rate
from torch.utils.flop_counter import FlopCounterMode

from mamf.data.cache import cache_root
from mamf.data.dataset import ImageDataset
from mamf.features import frozen_engine
from mamf.features.inputs import ModelInputs
from mamf.methods.base import make_optimizer
from mamf.methods.finetune import step, trainable
from mamf.models.effnet_minilm import imagenet_classes


def backbone_flops(model) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.image_backbone(torch.zeros(1, 3, model.image_size, model.image_size))
    return counter.get_total_flops()


def backbone_contenders(model, ds, inputs: ModelInputs, ours) -> dict:
    """The frozen image backbone over all of `ds`'s images in chunks of 64, three ways: mamf's
    path (`ours`, its onnxruntime session), eager PyTorch, and onnxruntime run directly on the
    same graph file; name -> a function that runs it once."""
    import onnxruntime as ort

    weights = frozen_engine.weights_digest(model)
    (graph,) = (cache_root() / "onnx").glob(f"*{weights[:20]}*.onnx")
    plain = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    pixels = model.preprocess(ds.batch(np.arange(len(ds.images))))
    chunks = [pixels[i : i + 64] for i in range(0, len(ds.images), 64)]
    arrays = [c.contiguous().numpy() for c in chunks]

    def eager():
        with torch.no_grad():
            for c in chunks:
                model.image_backbone(c)

    def direct():
        for a in arrays:
            plain.run(None, {"pixels": a})

    every = np.arange(len(ds.images))
    return {"mamf": lambda: inputs._compute_backbone_features(model, ours, 64, True, every),
            "eager PyTorch": eager, "onnxruntime directly": direct}


def outputs(args) -> None:
    import onnxruntime as ort

    model = model_by_name(args.model).eval()
    ds = ImageDataset.load(image_folder(n_classes=8, per_class=args.images // 8), model.image_size)
    inputs = ModelInputs(model, ds, torch.device("cpu"))
    engine = frozen_engine.engine_for(model, inputs.device, inputs.precision)
    weights = frozen_engine.weights_digest(model)
    ours = frozen_engine.onnx_backbone(model, weights) if engine == frozen_engine.ONNXRUNTIME else None
    if ours is None:
        raise SystemExit(f"mamf computes {args.model}'s frozen outputs with PyTorch here; "
                         "install onnxruntime and onnx (the offline extra)")
    n = len(ds.images)
    run = backbone_contenders(model, ds, inputs, ours)
    times = interleaved({k: run[k] for k in ("eager PyTorch", "mamf", "onnxruntime directly")},
                        args.repeats)
    f32 = matmul_rate(torch.float32)
    flops = backbone_flops(model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, onnxruntime "
          f"{ort.__version__}; {args.model} image backbone ({flops / 1e9:.2f} GFLOP per image), "
          f"{n} images in chunks of 64; load {os.getloadavg()[0]:.2f}")
    print(f"float32 matmul 2048^3: {f32 / 1e9:.1f} GFLOP/s")
    print("| variant | img/s | share of the matmul rate | vs eager | vs onnxruntime directly |")
    print("|---|---|---|---|---|")
    for name, seconds in times.items():
        rate = n / seconds
        print(f"| {name} | {rate:.1f} | {rate * flops / f32:.0%} | "
              f"{times['eager PyTorch'] / seconds:.2f} x | "
              f"{times['onnxruntime directly'] / seconds:.2f} x |")


def texts(args) -> None:
    import onnxruntime as ort

    model = model_by_name(args.model).eval()
    ds = ImageDataset.load(image_folder(n_classes=2, per_class=1), model.image_size)
    names = imagenet_classes()
    ds.prompts = [f"a photo of a {names[i % len(names)]}." for i in range(args.prompts)]
    inputs = ModelInputs(model, ds, torch.device("cpu"))  # tokenises the prompts set above

    started = time.perf_counter()
    inputs._text_embeddings(model, 64)  # exports and checks the graph, once
    export_s = time.perf_counter() - started
    weights = frozen_engine.text_digest(model)
    chunks = [np.arange(i, min(i + 64, args.prompts)) for i in range(0, args.prompts, 64)]
    started = time.perf_counter()
    ours = frozen_engine.onnx_text_tower(model, weights, [inputs._tokens(c) for c in chunks])
    open_s = time.perf_counter() - started
    if ours is None:
        raise SystemExit(f"mamf computes {args.model}'s frozen text embeddings with PyTorch here; "
                         "install onnxruntime and onnx (the offline extra)")
    (graph,) = (cache_root() / "onnx").glob(f"*-text-{weights[:20]}*.onnx")
    plain = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in plain.get_inputs()}
    feeds = [{k: v.numpy() for k, v in inputs._tokens(c).items() if k in wanted} for c in chunks]

    def eager() -> torch.Tensor:
        return inputs._embed_chunks(model, chunks, model.encode_texts)

    def mamf_path() -> torch.Tensor:
        return inputs._embed_chunks(model, chunks, ours)

    def direct():
        for feed in feeds:
            plain.run(None, feed)

    gap = float((mamf_path() - eager()).abs().max())
    times = interleaved({"eager PyTorch": eager, "mamf": mamf_path, "onnxruntime directly": direct},
                        args.repeats)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, onnxruntime "
          f"{ort.__version__}; {args.model} text tower, {args.prompts} prompts in chunks of 64; "
          f"load {os.getloadavg()[0]:.2f}; largest difference from PyTorch {gap:.1e}; first "
          f"call (export and check) {export_s:.1f} s, opening the cached graph {open_s:.2f} s")
    print("| variant | prompts/s | vs eager | vs onnxruntime directly |")
    print("|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {args.prompts / seconds:.1f} | {times['eager PyTorch'] / seconds:.2f} x"
              f" | {times['onnxruntime directly'] / seconds:.2f} x |")


def steps(args) -> None:
    folder = image_folder(n_classes=10, per_class=12)
    setups = {}
    for cached in (False, True):
        model = model_by_name(args.model).eval()
        ds = ImageDataset.load(folder, model.image_size)
        for p in [*model.image_backbone_parameters(), *model.text_parameters()]:
            p.requires_grad_(False)
        inputs = ModelInputs(model, ds, torch.device("cpu"), freeze_image_backbone=cached,
                             freeze_text_tower=cached)
        batch = whole_batch(ds, args.batch)
        optimizer = make_optimizer(trainable(model), 1e-3)
        setups["cached" if cached else "recomputed"] = (model, inputs, batch, optimizer)
    times = interleaved({k: (lambda s=s: step(s[0], s[1], s[2], s[3]))
                         for k, s in setups.items()}, args.repeats)
    print(f"\n{args.model}, batch {args.batch}, training the image head and logit scale only")
    print(f"recomputed frozen outputs: {times['recomputed'] * 1e3:9.1f} ms/step")
    print(f"cached frozen outputs:     {times['cached'] * 1e3:9.1f} ms/step")
    print(f"speed-up:                  {times['recomputed'] / times['cached']:9.1f} x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="effnet-minilm")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--part", choices=["outputs", "texts", "steps", "all"], default="all")
    args = ap.parse_args()
    if args.part in ("outputs", "all"):
        outputs(args)
    if args.part in ("texts", "all"):
        texts(args)
    if args.part in ("steps", "all"):
        steps(args)


if __name__ == "__main__":
    main()
