"""Subnormal gradients on a CPU: a 1x1-convolution backward with IEEE subnormals kept (PyTorch's
default) and flushed to zero (what mamf does while training and adapting), side by side.

    python bench/denormals.py [--batch 32] [--repeats 5] [--threads 1]

The shapes are EfficientNet-Lite0's last block and head convolution at 7x7 (1152 -> 320,
320 -> 1280), the layers where a collapsing effnet-minilm run spent its time once its gradients
fell below 1.2e-38. Gradients of ordinary size (randn) and of subnormal size (randn * 1e-39)
are timed interleaved in each mode. The machine's limit is its fp32 matmul rate: a 1x1
convolution's backward is two GEMMs (input and weight gradients). onnxruntime runs no backward,
so it has no column here.
"""

from __future__ import annotations

import argparse
import os

import torch
from common import interleaved

from mamf.system import denormals

os.environ.pop(denormals.ENV, None)  # "flushed" flushes even where MAMF_DENORMALS=keep is set

SHAPES = [(1152, 320), (320, 1280)]  # (in, out) channels of the 1x1 convolutions


def backward(conv: torch.nn.Conv2d, x: torch.Tensor, grad: torch.Tensor):
    def run():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).backward(grad)
    return run


def flushed(run):
    """`run` inside mamf's flush-to-zero block, entered and left every call as training does."""
    def inside():
        with denormals.flushed():
            run()
    return inside


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = interleaved({"mm": lambda: a @ b}, repeats)["mm"]
    return 2 * n ** 3 / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_rate()
    print(f"threads {args.threads}, batch {args.batch}; fp32 matmul rate {peak / 1e9:.1f} GFLOP/s")
    print(f"{'conv':>12} {'gradient':>10} {'kept ms':>9} {'flushed ms':>11} {'kept/flushed':>13}"
          f" {'flushed/matmul':>15}")
    for cin, cout in SHAPES:
        conv = torch.nn.Conv2d(cin, cout, 1, bias=False)
        x = torch.randn(args.batch, cin, 7, 7, requires_grad=True)
        flops = 2 * 2 * args.batch * 49 * cin * cout
        for scale, name in ((1.0, "ordinary"), (1e-39, "subnormal")):
            grad = torch.randn(args.batch, cout, 7, 7) * scale
            fns = {"kept": backward(conv, x, grad), "flushed": flushed(backward(conv, x, grad))}
            torch.set_flush_denormal(False)
            t = interleaved(fns, args.repeats)
            print(f"{cin:>5}->{cout:<5} {name:>10} {t['kept'] * 1e3:9.1f} {t['flushed'] * 1e3:11.1f}"
                  f" {t['kept'] / t['flushed']:13.1f} {flops / t['flushed'] / peak:15.2f}")


if __name__ == "__main__":
    main()
