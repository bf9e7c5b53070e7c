"""The CLIP ViT-B/32 training step on a GPU with bf16 autocast: ours against a plain PyTorch step.

    python bench/gpu_step.py [--device cuda] [--precision bf16] [--batch 128] [--repeats 20]

One prepared command for a lent GPU machine (it also runs on a CPU with --device cpu --batch 8,
which is how it is checked here). Ours is `mamf.methods.finetune.step` reading the uint8 image cache and
moving each batch to the device, as training does; plain holds the batch on the device already.
Prints images per second for both, and the step's FLOP rate against the bare matmul rate.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from common import image_folder, timed, vit_b32_random, whole_batch
from hardware import matmul_rate
from torch.utils.flop_counter import FlopCounterMode

from mamf.data.dataset import ImageDataset
from mamf.features.inputs import ModelInputs, autocast
from mamf.methods.finetune import step, trainable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__}, {name}, {args.precision} autocast, batch {args.batch}")

    model = vit_b32_random().to(device).eval()
    folder = image_folder(n_classes=10, per_class=max(8, args.batch // 10 + 2))
    ds = ImageDataset.load(folder, model.image_size)
    inputs = ModelInputs(model, ds, device, args.precision)
    batch = whole_batch(ds, args.batch)
    ours_opt = torch.optim.Adam(trainable(model), lr=1e-7)
    plain_opt = torch.optim.Adam(trainable(model), lr=1e-7)
    pixels = model.preprocess(ds.batch(batch.images).to(device))
    tokens = {k: v.to(device) for k, v in model.tokenize(ds.prompts).items()}
    labels = torch.as_tensor(batch.labels, device=device)

    def plain_step():
        plain_opt.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            image = F.normalize(model.encode_images(pixels).float(), dim=-1)
            text = F.normalize(model.encode_texts(tokens).float(), dim=-1)
        F.cross_entropy(model.logit_scale().float() * image @ text.T, labels).backward()
        plain_opt.step()

    def ours_step():
        step(model, inputs, batch, ours_opt)

    counter = FlopCounterMode(display=False)
    with counter:
        plain_step()
    flops = counter.get_total_flops()
    times = {"plain": [], "ours": []}
    for _ in range(3):  # interleaved rounds: noise hits both alike
        times["plain"].append(timed(plain_step, args.repeats, warmup=2, device=device))
        times["ours"].append(timed(ours_step, args.repeats, warmup=2, device=device))
    plain, ours = (statistics.median(times[k]) for k in ("plain", "ours"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    peak = matmul_rate(dtype, n=4096, repeats=10, device=device)
    print(f"| step | s/step | images/s | FLOP/s vs {args.precision} matmul |")
    print("|---|---|---|---|")
    for what, seconds in (("plain PyTorch", plain), ("mamf", ours)):
        print(f"| {what} | {seconds:.4f} | {args.batch / seconds:.0f} | "
              f"{flops / seconds / peak:.0%} |")
    print(f"ours/plain time: {ours / plain:.3f}; step {flops / 1e9:.1f} GFLOP; "
          f"matmul {peak / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()
