"""What the hardware achieves: bare matmul FLOP/s, and the FLOP/s of a CLIP ViT-B/32 training step.

    python bench/hardware.py [--batch 16] [--repeats 3]

FLOPs of the step are counted by torch.utils.flop_counter (matmuls and convolutions, forward and
backward); the step's rate is reported as a fraction of the bare matmul rate.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import timed, vit_b32_random
from torch.utils.flop_counter import FlopCounterMode


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 5,
                device: torch.device | None = None) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    seconds = timed(lambda: a @ b, repeats, warmup=2, device=device)
    return 2 * n**3 / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    f32 = matmul_rate(torch.float32)
    print(f"matmul 2048^3 float32:  {f32 / 1e9:8.1f} GFLOP/s")
    try:
        bf16 = matmul_rate(torch.bfloat16)
        print(f"matmul 2048^3 bfloat16: {bf16 / 1e9:8.1f} GFLOP/s")
    except RuntimeError as e:
        print(f"bfloat16 matmul not supported here: {e}")

    model = vit_b32_random()
    tokens = model.tokenize([f"A photo of a class {i}." for i in range(10)])
    pixels = torch.randn(args.batch, 3, 224, 224)
    labels = torch.randint(0, 10, (args.batch,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-7)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        image = F.normalize(model.encode_images(pixels), dim=-1)
        text = F.normalize(model.encode_texts(tokens), dim=-1)
        F.cross_entropy(model.logit_scale() * image @ text.T, labels).backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        train_step()
    flops = counter.get_total_flops()
    seconds = timed(train_step, args.repeats, warmup=1)
    rate = flops / seconds
    print(f"ViT-B/32 training step, batch {args.batch}: {flops / 1e9:.1f} GFLOP in {seconds:.2f} s "
          f"= {rate / 1e9:.1f} GFLOP/s, {rate / f32:.0%} of the float32 matmul rate")


if __name__ == "__main__":
    main()
