"""One training step of each method against a hand-written PyTorch step on the same model and batch.

    python bench/step.py [--models tiny-random-clip,effnet-minilm,vit-b32-random] [--repeats 5]

The plain step reads a batch already in memory as a float tensor; ours reads the uint8 cache, so
the ratio includes everything `mamf` adds (cache read, preprocessing, loss plumbing).
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F
from common import image_folder, interleaved, model_by_name, whole_batch

from mamf.data.dataset import ImageDataset
from mamf.features.inputs import ModelInputs
from mamf.methods import fomaml
from mamf.methods.finetune import Batch, step
from mamf.tasks.task import Task


def plain_loss(model, pixels, tokens, labels):
    image = F.normalize(model.encode_images(pixels), dim=-1)
    text = F.normalize(model.encode_texts(tokens), dim=-1)
    return F.cross_entropy(model.logit_scale() * image @ text.T, labels)


def bench(name: str, batch_size: int, repeats: int) -> list[tuple]:
    model = model_by_name(name).eval()
    folder = image_folder(n_classes=10, per_class=max(8, batch_size // 5 + 4))
    ds = ImageDataset.load(folder, model.image_size)
    inputs = ModelInputs(model, ds, torch.device("cpu"))
    batch = whole_batch(ds, batch_size)
    idx, labels, classes = batch.images, batch.labels, batch.classes
    five = classes[:5]
    in_five = np.isin(labels, np.arange(5))
    task_batch = Batch(idx[in_five], labels[in_five], five)

    pixels = model.preprocess(ds.batch(idx))
    tokens = model.tokenize(ds.prompts)
    target = torch.as_tensor(labels)
    params = [p for p in model.parameters() if p.requires_grad]
    ours_opt = torch.optim.Adam(params, lr=1e-7)
    plain_opt = torch.optim.Adam(params, lr=1e-7)

    def plain_step(px, tok, y):
        plain_opt.zero_grad(set_to_none=True)
        plain_loss(model, px, tok, y).backward()
        plain_opt.step()

    mask = torch.as_tensor(in_five)
    five_tokens = {k: v[:5] for k, v in tokens.items()}

    half = len(idx) // 2
    task = Task(classes, idx[:half], labels[:half], idx[half:], labels[half:])
    learner = fomaml.clone_learner(model)
    outer = torch.optim.Adam(params, lr=1e-7)
    s_px, q_px = pixels[:half], pixels[half:]
    s_y, q_y = target[:half], target[half:]
    plain_learner = copy.deepcopy(model)
    plain_outer = torch.optim.Adam(params, lr=1e-7)

    def plain_fomaml():
        with torch.no_grad():
            for d, s in zip(plain_learner.parameters(), model.parameters()):
                d.copy_(s)
        sgd = torch.optim.SGD(plain_learner.parameters(), lr=1e-7)
        for sl in range(0, half, 8):
            sgd.zero_grad(set_to_none=True)
            plain_loss(plain_learner, s_px[sl:sl + 8], tokens, s_y[sl:sl + 8]).backward()
            sgd.step()
        plain_learner.zero_grad(set_to_none=True)
        for sl in range(0, len(q_y), 8):
            part = len(q_y[sl:sl + 8]) / len(q_y)
            (plain_loss(plain_learner, q_px[sl:sl + 8], tokens, q_y[sl:sl + 8]) * part).backward()
        plain_outer.zero_grad(set_to_none=True)
        for p, q in zip(model.parameters(), plain_learner.parameters()):
            p.grad = q.grad
        plain_outer.step()

    times = interleaved({
        "plain": lambda: plain_step(pixels, tokens, target),
        "classical": lambda: step(model, inputs, batch, ours_opt),
        "plain-task": lambda: plain_step(pixels[mask], five_tokens, target[mask]),
        "mamf": lambda: step(model, inputs, task_batch, ours_opt),
        "plain-fomaml": plain_fomaml,
        "fomaml": lambda: fomaml.outer_step(model, learner, inputs, [task], outer, 1e-7, 1, 8,
                                            [np.random.default_rng(0)]),
    }, repeats)
    rows = [(name, "classical", times["classical"], times["plain"]),
            (name, "mamf (5 of 10 classes)", times["mamf"], times["plain-task"]),
            (name, "fomaml", times["fomaml"], times["plain-fomaml"])]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="tiny-random-clip,effnet-minilm,vit-b32-random")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'model':18} {'step':24} {'ours s':>9} {'plain s':>9} {'ours/plain':>10}")
    for name in args.models.split(","):
        batch = args.batch if name != "vit-b32-random" else min(args.batch, 16)
        for model, what, ours, plain in bench(name, batch, args.repeats):
            print(f"{model:18} {what:24} {ours:9.4f} {plain:9.4f} {ours / plain:10.3f}")


if __name__ == "__main__":
    main()
