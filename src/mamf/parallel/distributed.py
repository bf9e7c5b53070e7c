"""torch.distributed, when launched by torchrun: rank helpers and the few collectives mamf uses.

Without torchrun (no WORLD_SIZE in the environment) every function here is a no-op and mamf runs
as a single process. The backend follows the device: gloo on CPU, NCCL on GPU; collectives time
out (MAMF_DIST_TIMEOUT seconds, default 600) so a failed rank ends the job instead of hanging it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from mamf.system.errors import MamfError


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU named by LOCAL_RANK; more processes on a node
    than it has GPUs is one clear error, not CUDA's "invalid device ordinal"."""
    if device.type == "cuda" and launched() and device.index is None:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        count = torch.cuda.device_count()
        if local >= count:
            per_node = os.environ.get("LOCAL_WORLD_SIZE", str(local + 1))
            raise MamfError(f"torchrun started {per_node} processes on this node, which has "
                            f"{count} GPU(s): use --nproc_per_node={count} or fewer, or "
                            "--device cpu")
        return torch.device("cuda", local)
    return device


def init(device: torch.device) -> None:
    if launched() and not dist.is_initialized():
        # before the group exists: torch.distributed.nn's functions take `group=group.WORLD` as
        # a default argument, evaluated at import. Imported later (DDP does, lazily) they would
        # hold the group past `shutdown`, so its gloo threads would outlive the interpreter and
        # could abort a finished rank at exit ("terminate called without an active exception")
        import torch.distributed.nn  # noqa: F401

        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        _name_the_next_group()
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()))


_groups = 0  # process groups this process has started (a command each)


def _name_the_next_group() -> None:
    """torch names the default group by a counter that destroying the group resets, and the
    ranks meet under that name in torchrun's store: a second command in the same process (a
    script calling `main` twice) would read the addresses the first left there and fail to
    connect. Every rank starts the same commands, so a name from their count is the same on all."""
    from torch.distributed import distributed_c10d

    global _groups
    _groups += 1
    if _groups > 1:  # the first command's group keeps torch's own name
        distributed_c10d._world.group_count = 1000 * _groups


MAX_TIMEOUT = 7 * 24 * 3600  # timedelta takes more, but a collective never waits a week


def timeout_seconds() -> float:
    """MAMF_DIST_TIMEOUT: seconds, a positive number (one error line otherwise)."""
    text = os.environ.get("MAMF_DIST_TIMEOUT", "600")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN fails too
        from mamf.system.errors import MamfError, shown

        raise MamfError(f"MAMF_DIST_TIMEOUT must be seconds, a number above 0 and at most "
                        f"{MAX_TIMEOUT:g} (a week); got {shown(text)}")
    return seconds


# how gloo and NCCL word a collective's timeout, and torch's store a rank that came late to the
# start (another rank still importing, on a loaded machine: "wait timeout after 10000ms, keys: ...")
TIMEOUT_WORDS = ("timed out", "collective operation timeout", "wait timeout")


def timed_out(error: BaseException) -> bool:
    """Whether `error` is this rank waiting for another past the timeout."""
    text = str(error).lower()
    return launched() and any(words in text for words in TIMEOUT_WORDS)


def rank() -> int:
    """This process's rank: from the process group, or from torchrun's RANK before it exists."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def _device() -> torch.device:
    """Where collective tensors must live: NCCL only talks CUDA."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_tensors(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place, as one flat all-reduce."""
    if world_size() == 1 or not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(_device(), torch.float32) for t in tensors])
    dist.all_reduce(flat)
    start = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[start : start + n].view_as(t))
        start += n


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum each parameter's gradient over the ranks (a missing one counts as zero)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    sum_tensors([p.grad for p in params])


def sum_scalar(value: float) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return float(t.item())


def from_main(obj):
    """Rank 0's `obj` on every rank: one view of shared files, even where nodes see them late."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share(total: int, rank: int, world: int) -> tuple[int, int]:
    """(start, count) of a rank's part of `total` items: parts differ by at most one."""
    base, extra = divmod(total, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def gather_rows(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; rank r holds sizes[r] rows (none empty)."""
    if world_size() == 1:
        return local
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


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
    return context if is_main() else contextlib.nullcontext()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. decoding images into the shared cache), then the others,
    who find its work done instead of repeating it side by side."""
    if not dist.is_initialized():
        yield
        return
    if not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if is_main():
            dist.barrier()


def _forget_meshes() -> None:
    """Empty DTensor's caches keyed by sharding specs. A device mesh compares equal to a later
    one over the same ranks, so a cached spec would hand the next group's tensors this group's
    mesh, which names a destroyed group ("Could not resolve the process group")."""
    try:
        from torch.distributed.tensor._collective_utils import MeshTopoInfo
        from torch.distributed.tensor._redistribute import _gen_transform_infos
        from torch.distributed.tensor.debug import _clear_sharding_prop_cache
    except ImportError:  # a torch that keeps other caches, or none: nothing known to empty
        return

    _clear_sharding_prop_cache()
    _gen_transform_infos.cache_clear()
    MeshTopoInfo.build_from_mesh.cache_clear()


def shutdown(ok: bool = True) -> None:
    """Leave together after success: a rank tearing down gloo while another still talks aborts
    the job. After a failure, leave at once: torchrun then stops the other ranks."""
    if dist.is_initialized():
        try:
            if ok:
                dist.barrier()
        finally:
            if "torch.distributed.tensor" in sys.modules:  # FSDP's, when it ran
                _forget_meshes()
            dist.destroy_process_group()
