"""Frozen towers: outputs computed once and cached, against recomputing them every step.

    python bench/frozen.py [--model effnet-minilm] [--repeats 5]

Both variants train exactly the same parameters (the image head and the logit scale; text tower
and image backbone frozen); only where the frozen outputs come from differs.
"""

from __future__ import annotations

import argparse

import torch
from common import image_folder, interleaved, model_by_name, whole_batch

from mamf.data.dataset import ImageDataset
from mamf.finetune import step, trainable
from mamf.inputs import ModelInputs
from mamf.methods.base import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="effnet-minilm")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, batch "
          f"{args.batch}, training the image head and logit scale only")
    print(f"recomputed frozen outputs: {times['recomputed'] * 1e3:9.1f} ms/step")
    print(f"cached frozen outputs:     {times['cached'] * 1e3:9.1f} ms/step")
    print(f"speed-up:                  {times['recomputed'] / times['cached']:9.1f} x")


if __name__ == "__main__":
    main()
