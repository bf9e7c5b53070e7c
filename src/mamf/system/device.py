"""Where a run computes and in what precision: the device, autocast, TF32, moving data onto it.

`auto` means a CUDA GPU when torch sees one, else the CPU; `MAMF_DEVICE=cpu` (or `cuda`) makes
`auto` mean that instead (the test suite pins the CPU so). `auto` precision is bf16 autocast on a
GPU that computes bf16 natively (compute capability 8.0 or newer: A100, H100, RTX 30xx and on) and
fp32 everywhere else: a V100's or T4's bf16 is emulated, slower than fp32. fp16 is refused: it
needs loss scaling in every backward pass (training, the meta-test's adaptation, FOMAML's inner
loop), which mamf does not do, and without it small gradients round to zero.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

from mamf.system.errors import MamfError

FP16_REFUSED = ("precision fp16 is not offered: fp16 training needs loss scaling, which mamf "
                "does not do; use bf16 (on a GPU that has it natively) or fp32")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = os.environ.get("MAMF_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MamfError("--device cuda was asked for but no CUDA GPU is available")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (not emulated in fp32)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on a GPU that has bf16 natively, plain fp32 elsewhere (on a CPU:
    exact, reproducible)."""
    if precision == "fp16":
        raise MamfError(FP16_REFUSED)
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked for; fp32 otherwise."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def set_tf32(device: torch.device, on: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (`train.tf32`), on a CUDA GPU only:
    the CPU's fp32 arithmetic is never touched."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def tf32_in_effect(device: torch.device) -> bool | None:
    """What a row records: whether fp32 matmuls ran in TF32 (None: not a CUDA device)."""
    return bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None


def host_to_device(array: np.ndarray | torch.Tensor, device: torch.device,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """`array` on `device` without the host waiting for the GPU: staged in pinned memory and
    copied asynchronously on a GPU (a pageable copy blocks until the stream is idle); as it is on
    a CPU."""
    tensor = torch.as_tensor(array, dtype=dtype)
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def fused_optimizer_options(params: list[torch.nn.Parameter]) -> dict:
    """Adam's fastest implementation where it cannot change a CPU row: fused kernels for
    parameters on a CUDA GPU, torch's default (the per-tensor loop) everywhere else."""
    if params and all(p.device.type == "cuda" for p in params):
        return {"fused": True}
    return {}


def compile_towers(model: torch.nn.Module, device: torch.device, on: bool) -> None:
    """`train.compile`: torch.compile each of the model's direct submodules (its towers) in
    place, on a CUDA GPU only; the parameters and their names stay as they are, so checkpoints
    and weights files do not change. Compilation happens at the first call of each."""
    if on and device.type == "cuda":
        for child in model.children():
            child.compile()
