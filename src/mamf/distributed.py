"""torch.distributed, when launched by torchrun: rank helpers and gathering per-task results.

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op and mamf runs
as a single process. The backend follows the device: gloo on CPU, NCCL on GPU; collectives time
out (MAMF_DIST_TIMEOUT seconds, default 600) so a failed rank ends the job instead of hanging it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> None:
    if launched() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=float(os.environ.get("MAMF_DIST_TIMEOUT", "600")))
        dist.init_process_group(backend, timeout=timeout)


def rank() -> int:
    """This process's rank: from the process group, or from torchrun's RANK before it exists."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def gather_by_index(local: dict[int, float], total: int) -> list[float]:
    """Merge every rank's {task index: accuracy} into the full list, in task order."""
    if world_size() == 1:
        return [local[i] for i in range(total)]
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, local)
    merged = {k: v for part in parts for k, v in part.items()}
    return [merged[i] for i in range(total)]


def main_only(context):
    """`context` on rank 0, a do-nothing context elsewhere (e.g. the output-folder lock)."""
    import contextlib

    return context if is_main() else contextlib.nullcontext()


def shutdown() -> None:
    """Leave together: a rank tearing down gloo while another still talks aborts the job."""
    if dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
