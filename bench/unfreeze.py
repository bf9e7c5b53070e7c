"""Partial unfreezing: a training step with the last k blocks trainable over the cached boundary,
against end-to-end training and against recomputing the frozen part every step (no cache).

    python bench/unfreeze.py [--model effnet-minilm] [--ks 1,2] [--batch 32] [--threads 2]

k applies to both towers (`train.unfreeze_image_blocks` = `unfreeze_text_layers` = k). Every
variant is a classical step through `mamf.methods.finetune.step` on its own copy of the model (frozen
parameters differ between them), on one batch over all 10 classes, timed interleaved. The cache
build (the frozen part run once over every image and prompt) is timed apart, with the engine
mamf picks (onnxruntime on the CPU) and with PyTorch.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from pathlib import Path

import torch
from common import image_folder, interleaved_samples, model_by_name, whole_batch

from mamf.data.dataset import ImageDataset
from mamf.features import frozen_engine
from mamf.features.inputs import ModelInputs
from mamf.methods.finetune import step, trainable

CPU = torch.device("cpu")


class Recomputing(ModelInputs):
    """The frozen part run again at every step, under no_grad: what the cache saves."""

    def __init__(self, model, dataset, k: int):
        super().__init__(model, dataset, CPU)
        self.k = k
        for tower, top in ((model.image_backbone_parameters(), model.image_top_parameters(k)),
                           (model.text_parameters(), model.text_top_parameters(k))):
            keep = {id(p) for p in top}
            for p in tower:
                p.requires_grad_(id(p) in keep)

    def images(self, model, indices, augment=False, within=None):
        with torch.no_grad():
            pixels = model.preprocess(self.dataset.batch(indices))
            boundary = model.image_bottom(pixels, self.k)
        return model.image_head(model.image_top(boundary, self.k))

    def texts(self, model, class_ids):
        tokens = self._tokens(class_ids)
        with torch.no_grad():
            boundary = model.text_bottom(tokens, self.k)
        return model.text_top(boundary, tokens, self.k)


def build(model, ds, k: int, engine: str) -> tuple[ModelInputs, float]:
    """Boundary caches for k, built with `engine` (no feature file kept from before; an exported
    graph is reused); seconds it took."""
    for old in Path(ds.images.filename).parent.glob("features-*.npy"):
        old.unlink()
    if engine == frozen_engine.TORCH:
        os.environ[frozen_engine.ENV] = frozen_engine.TORCH
    else:
        os.environ.pop(frozen_engine.ENV, None)
    started = time.perf_counter()
    inputs = ModelInputs(model, ds, CPU, image_top_blocks=k, text_top_layers=k)
    return inputs, time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="effnet-minilm")
    ap.add_argument("--ks", default="1,2")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ks = [int(k) for k in args.ks.split(",")]
    base = model_by_name(args.model).eval()
    folder = image_folder(n_classes=10, per_class=args.per_class)
    ds = ImageDataset.load(folder, base.image_size)
    batch = whole_batch(ds, args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}, "
          f"batch {args.batch}, {len(ds.images)} images, load {os.getloadavg()[0]:.1f}")

    print(f"\ncache build ({len(ds.images)} images, {len(ds.prompts)} prompts):")
    print(f"{'k':>3} {'engine':24} {'build s':>8} {'ms/image':>9} {'KiB/image':>10}")
    variants, trained = {}, {}
    for k in ks:
        for engine, what in ((frozen_engine.ONNXRUNTIME, "onnxruntime, exporting"),
                             (frozen_engine.ONNXRUNTIME, "onnxruntime"),
                             (frozen_engine.TORCH, "torch")):
            model = copy.deepcopy(base)
            inputs, seconds = build(model, ds, k, engine)
            per_image = inputs.features[0].numel() * inputs.features.element_size() / 1024
            print(f"{k:3d} {what:24} {seconds:8.2f} {1000 * seconds / len(ds.images):9.1f} "
                  f"{per_image:10.1f}")
        variants[f"cached k={k}"] = (model, inputs)
        model = copy.deepcopy(base)
        variants[f"recompute k={k}"] = (model, Recomputing(model, ds, k))
    os.environ.pop(frozen_engine.ENV, None)
    model = copy.deepcopy(base)
    variants["end to end"] = (model, ModelInputs(model, ds, CPU))

    steps = {}
    for name, (model, inputs) in variants.items():
        params = trainable(model)
        trained[name] = sum(p.numel() for p in params)
        optimizer = torch.optim.Adam(params, lr=1e-7)
        steps[name] = (lambda m=model, i=inputs, o=optimizer: step(m, i, batch, o))
    samples = interleaved_samples(steps, args.repeats)
    # on a shared machine the median carries the others' load; the minimum is the closest to
    # the step's own cost
    for label, stat in (("median", statistics.median), ("minimum", min)):
        times = {name: stat(v) for name, v in samples.items()}
        e2e = times["end to end"]
        print(f"\none classical step ({label} of {args.repeats}, interleaved):")
        print(f"{'variant':16} {'trainable':>11} {'step s':>8} {'e2e/this':>9} "
              f"{'recompute/this':>15}")
        for name, seconds in times.items():
            k = name.split("k=")[-1] if "k=" in name else None
            recompute = times.get(f"recompute k={k}") if name.startswith("cached") else None
            again = f"{recompute / seconds:15.1f}" if recompute else f"{'':15}"
            print(f"{name:16} {trained[name]:11,d} {seconds:8.4f} {e2e / seconds:9.1f} {again}")
    print(f"load {os.getloadavg()[0]:.1f} at the end")

if __name__ == "__main__":
    main()
