"""Feeding a step: images per second from the uint8 cache against decoding the files each time,
and data loading as a share of a training step.

    python bench/data.py [--models tiny-random-clip,effnet-minilm] [--repeats 5]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from common import image_folder, interleaved, model_by_name, whole_batch

from mamf.data.cache import decode
from mamf.data.dataset import ImageDataset
from mamf.features.inputs import ModelInputs
from mamf.methods.base import make_optimizer
from mamf.methods.finetune import step, trainable


def measure(name: str, folder, files, batch_size: int, repeats: int) -> None:
    model = model_by_name(name).eval()
    ds = ImageDataset.load(folder, model.image_size)
    inputs = ModelInputs(model, ds, torch.device("cpu"))
    batch = whole_batch(ds, batch_size)
    rng = np.random.default_rng(1)
    optimizer = make_optimizer(trainable(model), 1e-7)

    def from_cache():
        model.preprocess(ds.batch(rng.choice(len(ds.images), batch_size, replace=False)))

    def from_files():
        pick = rng.choice(len(files), batch_size, replace=False)
        arr = np.stack([decode(files[i], model.image_size) for i in pick])
        model.preprocess(torch.from_numpy(arr))

    t = interleaved({"cache": from_cache, "decode": from_files,
                     "step": lambda: step(model, inputs, batch, optimizer)}, repeats)
    print(f"{name:18} {batch_size / t['cache']:12.0f} {batch_size / t['decode']:13.0f} "
          f"{t['decode'] / t['cache']:13.1f} {t['step'] * 1e3:9.1f} "
          f"{t['cache'] / t['step']:11.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="tiny-random-clip,effnet-minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    folder = image_folder(n_classes=10, per_class=30)
    files = sorted(folder.glob("*/*.png"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'model':18} {'cache img/s':>12} {'decode img/s':>13} {'cache/decode':>13} "
          f"{'step ms':>9} {'data share':>11}")
    for name in args.models.split(","):
        measure(name, folder, files, args.batch, args.repeats)

if __name__ == "__main__":
    main()
