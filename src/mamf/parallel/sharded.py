"""FSDP (`fully_shard`) for `train.parallel=fsdp`: parameters, gradients and Adam state sharded
across the ranks, for models whose training state does not fit one device.

FSDP cannot shard 0-d parameters (CLIP's logit scale is one), so every sub-module without one is
sharded, block by block, and the few parameters left over stay replicated: their gradients are
averaged by hand, as DDP would. The original model is kept whole (off the GPU while training)
and receives the trained weights at the end, so checkpoints and the meta-test see a plain model.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from mamf.parallel import distributed


def _has_scalar(module: torch.nn.Module) -> bool:
    return any(p.dim() == 0 for p in module.parameters())


def mesh(device: torch.device) -> DeviceMesh:
    """All ranks in one dimension, on the training device's type (gloo CPU or NCCL GPU)."""
    return init_device_mesh(device.type, (distributed.world_size(),))


def shard(module: torch.nn.Module, mesh: DeviceMesh) -> None:
    """fully_shard each block (the items of a ModuleList or Sequential), then each scalar-free
    sub-module around them; sub-modules holding a 0-d parameter are only descended into."""
    if not any(True for _ in module.parameters()):
        return
    if _has_scalar(module):
        for child in module.children():
            shard(child, mesh)
        return
    _shard_blocks(module, mesh)
    fully_shard(module, mesh=mesh)


def _shard_blocks(module: torch.nn.Module, mesh: DeviceMesh) -> None:
    for child in module.children():
        if isinstance(child, torch.nn.ModuleList | torch.nn.Sequential):
            for block in child:
                if any(True for _ in block.parameters()) and not _has_scalar(block):
                    fully_shard(block, mesh=mesh)
        else:
            _shard_blocks(child, mesh)


def replicated(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Trainable parameters FSDP left whole: their gradients need an explicit average."""
    return [p for p in module.parameters() if p.requires_grad and not isinstance(p, DTensor)]


def describe(module: torch.nn.Module) -> str:
    params = list(module.parameters())
    cut = [p for p in params if isinstance(p, DTensor)]
    here = sum(p.to_local().numel() for p in cut)
    return (f"{len(cut)} of {len(params)} parameter tensors sharded across "
            f"{distributed.world_size()} ranks; this rank holds {here} of their "
            f"{sum(p.numel() for p in cut)} values")


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    distributed.sum_gradients(params)
    for p in params:
        p.grad.div_(distributed.world_size())


def full(value):
    """A whole tensor from a sharded one (a collective: every rank calls it in the same order)."""
    return value.full_tensor() if isinstance(value, DTensor) else value


@torch.no_grad()
def copy_into(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Whole trained weights from the sharded copy `src` into the plain model `dst`."""
    for d, s in zip(dst.parameters(), src.parameters()):
        if s.requires_grad:
            d.copy_(full(s).to(d.device))


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    state = optimizer.state_dict()
    return {"state": {i: {k: full(v) for k, v in s.items()} for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def shard_optimizer_state(state: dict, params: list[torch.nn.Parameter]) -> dict:
    """A whole (checkpointed) optimiser state cut to match sharded parameters."""
    out = {}
    for i, entry in state["state"].items():
        p = params[int(i)]
        out[i] = {k: (distribute_tensor(v.to(p.device), p.device_mesh, p.placements)
                      if isinstance(p, DTensor) and torch.is_tensor(v) and v.shape == p.shape
                      else v) for k, v in entry.items()}
    return {"state": out, "param_groups": state["param_groups"]}
