"""CLIP ViT-B/16 training throughput on one GPU: mamf's training loop against a plain PyTorch loop.

    python bench/gpu_step.py                       # cuda; bf16 and fp32; batch 32 and 128
    python bench/gpu_step.py --device cpu --model tiny --batches 4 --precisions fp32 --steps 2,4

The model is a randomly initialised `CLIPModel` built from its config (ViT-B/16 image tower,
224 px, patch 16; the standard 12-layer, 512-wide text tower): throughput needs no weights, and
none can be downloaded where this runs. Both loops train every weight with Adam (fused on a GPU)
on the same images, 10 classes, the loss over all 10 class prompts (classical fine-tuning).

- mamf: `mamf.engine.training.train`, the loop every method trains through (batches drawn from the
  seeded stream, the uint8 image cache read and copied to the device from pinned memory, the
  loss read every 50 steps). Its time per step is the difference between two runs of different
  lengths, so model set-up, the first steps' warm-up and the final read cancel out.
- plain: a loop as a PyTorch user writes it, with every image already on the device as uint8;
  per step: random indices, normalisation, forward, loss, backward, `optimizer.step()`.

Printed per (precision, batch): images/s of both, mamf / plain, and MFU: the model's training
FLOPs per second over the datasheet's dense bf16 peak of an H100 or H200 SXM, 989 TFLOP/s (fp32
rows are put against that same peak, which says what fp32 gives up). FLOPs are the formula
below, counted once by torch's FlopCounterMode on the plain step to check it.

Training FLOPs per step = 3 x forward FLOPs (the backward pass costs two forwards: gradients
with respect to activations and to weights), and a forward's FLOPs are 2 x multiply-adds:

    transformer layer over T tokens of width d, MLP 4d:  12 T d^2 + 2 T^2 d  multiply-adds
        (QKV and output projections 4 T d^2; scores Q K^T and their weighted sum 2 T^2 d;
        MLP 8 T d^2)
    image tower, per image: patch embedding 196 x (3 x 16 x 16) x 768 + 12 layers at T = 197,
        d = 768 + projection 768 x 512
    text tower, per prompt (once per class a step): 12 layers at T = prompt tokens, d = 512
        + projection 512 x 512
    step = 3 x 2 x (batch x image + classes x text)

Softmax, layer norms, GELU and the loss are left out (under 1 %).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import image_folder
from torch.utils.flop_counter import FlopCounterMode

from mamf.config import build_config
from mamf.engine.training import train
from mamf.models.hf_clip import HFClip
from mamf.models.tiny import EOS, ByteTokenizer
from mamf.runs.prepare import prepare
from mamf.system.device import autocast

PEAK_BF16 = 989e12  # dense bf16 FLOP/s of an H100 SXM (and H200 SXM), NVIDIA's datasheet
CLASSES = 10


def vit_b16_random(tiny: bool = False) -> HFClip:
    """CLIP ViT-B/16 at full size (or, `tiny`, a 2-layer 64-wide one to check the script on a
    CPU), randomly initialised from its config."""
    from transformers import CLIPConfig, CLIPModel

    vision = {"patch_size": 16, "image_size": 224}
    text = {"eos_token_id": EOS, "max_position_embeddings": 77}
    if tiny:
        small = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4}
        vision, text = {**vision, **small}, {**text, **small}
    config = CLIPConfig(vision_config=vision, text_config=text,
                        projection_dim=64 if tiny else 512)
    torch.manual_seed(0)
    return HFClip(CLIPModel(config).eval(), ByteTokenizer(), name="clip-vit-b16-random")


def layer_macs(tokens: int, width: int) -> int:
    return 12 * tokens * width**2 + 2 * tokens**2 * width


def step_flops(model: HFClip, batch: int, prompt_tokens: int) -> float:
    """The formula in the docstring, from the model's own config."""
    v, t = model.clip.config.vision_config, model.clip.config.text_config
    patches = (v.image_size // v.patch_size) ** 2
    image = (patches * 3 * v.patch_size**2 * v.hidden_size
             + v.num_hidden_layers * layer_macs(patches + 1, v.hidden_size)
             + v.hidden_size * model.clip.config.projection_dim)
    text = (t.num_hidden_layers * layer_macs(prompt_tokens, t.hidden_size)
            + t.hidden_size * model.clip.config.projection_dim)
    return 3 * 2 * (batch * image + CLASSES * text)


def mamf_seconds_per_step(model, folder, device, precision, batch, steps) -> float:
    """mamf's loop: the difference of two runs' wall times over the difference of the images
    they trained on (an epoch's last batch may be short), as seconds per `batch` images."""
    times, images = {}, {}
    for n in steps:
        config = build_config(overrides={
            "model": "tiny-random-clip", "device": device.type, "precision": precision,
            "data.root": str(folder), "train.method": "classical", "train.batch_size": batch,
            "train.steps": n, "train.lr": 1e-7, "train.augment": False,
            "train.checkpoint_every": 0})
        _, dataset, inputs = prepare(config, model=model)
        started = time.perf_counter()
        result = train(model, inputs, dataset, config, progress=False)  # reads its losses
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times[n], images[n] = time.perf_counter() - started, result.images
    short, long = steps
    return (times[long] - times[short]) / (images[long] - images[short]) * batch


def plain_loop(model, folder, device, precision, batch):
    """A plain PyTorch step over images held on the device, and its prompt length."""
    from mamf.data.dataset import ImageDataset, group_labels

    ds = ImageDataset.load(folder, model.image_size)
    images = ds.batch(np.arange(len(ds.images))).to(device)  # uint8 [N, H, W, 3]
    labels = torch.as_tensor(group_labels(ds.class_images), device=device)
    tokens = {k: v.to(device) for k, v in model.tokenize(ds.prompts).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-7, fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(0)

    def step():
        pick = torch.randint(len(images), (batch,), device=device, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            image = F.normalize(model.encode_images(model.preprocess(images[pick])).float(), dim=-1)
            text = F.normalize(model.encode_texts(tokens).float(), dim=-1)
        loss = F.cross_entropy(model.logit_scale().float() * image @ text.T, labels[pick])
        loss.backward()
        optimizer.step()

    return step, tokens["input_ids"].shape[1]


def plain_seconds_per_step(step, device, steps) -> float:
    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="vit-b16", choices=["vit-b16", "tiny"])
    ap.add_argument("--precisions", default="bf16,fp32")
    ap.add_argument("--batches", default="32,128")
    ap.add_argument("--steps", default="10,40", help="the two lengths of mamf's runs; the plain "
                    "loop times the difference")
    args = ap.parse_args()
    logging.getLogger("mamf").setLevel(logging.ERROR)  # lr 1e-7 for a few steps is at chance
    device = torch.device(args.device)
    steps = tuple(int(s) for s in args.steps.split(","))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}; CLIP {args.model} (random weights); "
          f"{CLASSES} classes; MFU against {PEAK_BF16 / 1e12:.0f} TFLOP/s dense bf16")
    model = vit_b16_random(tiny=args.model == "tiny").to(device)
    folder = image_folder(n_classes=CLASSES, per_class=20)
    print("| precision | batch | mamf images/s | plain images/s | mamf / plain | mamf MFU | "
          "plain MFU |")
    print("|---|---|---|---|---|---|---|")
    checked = False
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            ours = mamf_seconds_per_step(model, folder, device, precision, batch, steps)
            step, prompt_tokens = plain_loop(model, folder, device, precision, batch)
            flops = step_flops(model, batch, prompt_tokens)
            if not checked:
                counter = FlopCounterMode(display=False)
                with counter:
                    step()
                print(f"(the formula: {flops / 1e12:.3f} TFLOP a step at batch {batch}; torch's "
                      f"count: {counter.get_total_flops() / 1e12:.3f})")
                checked = True
            plain = plain_seconds_per_step(step, device, steps[1] - steps[0])
            tf32 = " (TF32)" if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32 \
                and device.type == "cuda" else ""
            print(f"| {precision}{tf32} | {batch} | {batch / ours:.0f} | {batch / plain:.0f} | "
                  f"{plain / ours:.2f} | {flops / ours / PEAK_BF16:.1%} | "
                  f"{flops / plain / PEAK_BF16:.1%} |")


if __name__ == "__main__":
    main()
