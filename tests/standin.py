"""A GPU stand-in for a CPU build of torch: device tests and host-synchronisation counts.

A tensor "on the device" is a `Device` tensor: it holds real CPU values (every number is computed,
so code that reads predictions or accuracies runs to the end) but reports torch's `meta` device,
which a CPU build can place tensors and autograd on. `on_device()` installs a dispatch mode
that:

- refuses, as CUDA does, an op mixing device tensors with host tensors of one or more dimensions
  ("Expected all tensors to be on the same device ..."): host 0-dim scalars are allowed
  (TensorIterator takes them on CUDA), and host index tensors in indexing ops (CUDA copies them);
- turns every factory asked for the device (`torch.eye(n, device=x.device)`, `x.to(device)`,
  `torch.as_tensor(a, device=...)`) into a device tensor;
- counts the host synchronisations a CUDA run would make: a value read to the host (`.item()`,
  `float()`, `.tolist()`, `.cpu()`), an op whose output size depends on device values
  (`nonzero`, boolean masks, `unique`), a host index moved by an indexing op, and a copy from
  pageable host memory to the device (`non_blocking` from pinned memory is the one that does not
  wait). Pinning is recorded, not done (a CPU build has no pinned memory).

Model code that writes `device=x.device` never learns it is not on a GPU; code that forgets the
device fails here as it would on one.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

DEVICE = torch.device("meta")
aten = torch.ops.aten

_SYNC_READS = {aten._local_scalar_dense.default, aten.nonzero.default,
               aten.masked_select.default, aten._unique2.default, aten.unique_consecutive.default,
               aten.unique_dim.default, aten.repeat_interleave.Tensor}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
             aten._index_put_impl_.default}
_PINNED: WeakIdKeyDictionary = WeakIdKeyDictionary()


class Device(torch.Tensor):
    """A CPU tensor that says it lives on the device."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
            dtype=inner.dtype, device=DEVICE, requires_grad=inner.requires_grad,
            layout=inner.layout)
        out.inner = inner
        return out

    def __repr__(self) -> str:
        return f"Device({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, _ACTIVE[-1] if _ACTIVE else None)


class Syncs:
    """Host synchronisations counted, by kind, and where: the innermost frame outside torch and
    the tests ("mamf/file:line" in mamf's own code, "file:line" in a library's)."""

    def __init__(self) -> None:
        self.by_kind: Counter[str] = Counter()
        self.by_place: Counter[tuple[str, str]] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def in_mamf(self) -> Counter[tuple[str, str]]:
        return Counter({k: v for k, v in self.by_place.items() if k[1].startswith("mamf/")})

    def add(self, kind: str) -> None:
        self.by_kind[kind] += 1
        frames = [f for f in traceback.extract_stack() if "/tests/" not in f.filename
                  and "/torch/" not in f.filename]
        frame = frames[-1] if frames else None
        place = "?" if frame is None else \
            f"{'mamf/' if '/mamf/' in frame.filename else ''}{Path(frame.filename).name}:" \
            f"{frame.lineno}"
        self.by_place[(kind, place)] += 1


_ACTIVE: list[Syncs] = []


def _device_of(kwargs: dict) -> torch.device | None:
    device = kwargs.get("device")
    return None if device is None else torch.device(device)


def _check(func, flat: list) -> None:
    on = [t for t in flat if isinstance(t, Device)]
    off = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, Device)]
    if not on or not off:
        return
    if func in _INDEXING or func in (aten.copy_.default, aten._to_copy.default):
        return
    if all(t.dim() == 0 and t.device.type == "cpu" for t in off):
        return
    raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                       f"devices, cuda:0 (stand-in) and cpu! (in {func})")


def _unwrap(t):
    return t.inner if isinstance(t, Device) else t


def _wrap(t):
    return Device(t) if isinstance(t, torch.Tensor) and not isinstance(t, Device) else t


def _run(func, args, kwargs, syncs: Syncs | None):
    flat, _ = tree_flatten((args, kwargs))
    _check(func, flat)
    any_on = any(isinstance(t, Device) for t in flat)
    target = _device_of(kwargs)
    count = syncs.add if syncs is not None else (lambda kind: None)
    if func is aten._pin_memory.default:
        _PINNED[args[0]] = True
        return args[0]
    if func is aten.is_pinned.default:
        return args[0] in _PINNED
    if func is aten._to_copy.default:
        src = args[0]
        kw = dict(kwargs)
        if target is not None:
            kw["device"] = torch.device("cpu")
        kw.pop("non_blocking", None)
        out = func(_unwrap(src), **kw)
        to_device = target == DEVICE or (target is None and isinstance(src, Device))
        if isinstance(src, Device) and not to_device:
            count("device to host copy")
        if not isinstance(src, Device) and to_device and not (
                kwargs.get("non_blocking") and src in _PINNED):
            count("pageable host to device copy")
        return Device(out) if to_device else out
    if func is aten.copy_.default:
        dst, src = args[0], args[1]
        if isinstance(dst, Device) and not isinstance(src, Device) and src.dim() > 0 and not (
                kwargs.get("non_blocking") and src in _PINNED):
            count("pageable host to device copy")
        if not isinstance(dst, Device) and isinstance(src, Device):
            count("device to host copy")
        func(_unwrap(dst), _unwrap(src))
        return dst
    if any_on and func in _SYNC_READS:
        count("value read on the host")
    if any_on and func in _INDEXING:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", [])
        for i in indices or []:
            if isinstance(i, torch.Tensor) and not isinstance(i, Device):
                count("host index copied to the device")
            elif isinstance(i, Device) and i.dtype == torch.bool:
                count("value read on the host")
    if target == DEVICE:
        kwargs = dict(kwargs, device=torch.device("cpu"))
        any_on = True
    out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
    if not any_on or func is aten._local_scalar_dense.default:
        return out
    if not isinstance(out, (torch.Tensor, tuple, list)):
        return out
    return tree_map(_wrap, out)


class _Mode(TorchDispatchMode):
    def __init__(self, syncs: Syncs):
        super().__init__()
        self.syncs = syncs

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {}, self.syncs)


class _Factories(TorchFunctionMode):
    """Factories asked for the device from host data or none (`torch.eye(n, device=...)`,
    `torch.tensor(list, device=...)`): made on the host, then held as device tensors (torch
    would make a meta tensor, which has no values, without dispatching a copy)."""

    def __init__(self, syncs: Syncs):
        super().__init__()
        self.syncs = syncs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _device_of(kwargs) != DEVICE or any(
                isinstance(t, torch.Tensor) for t in tree_flatten((args, kwargs))[0]):
            return func(*args, **kwargs)  # moving a tensor: the dispatch mode sees its copy
        out = func(*args, **dict(kwargs, device=torch.device("cpu")))
        if func in (torch.tensor, torch.as_tensor):
            self.syncs.add("pageable host to device copy")
        return tree_map(_wrap, out)


@contextlib.contextmanager
def on_device() -> Iterator[Syncs]:
    """Inside: `DEVICE` behaves as a GPU would; yields the running count of host syncs."""
    syncs = Syncs()
    _ACTIVE.append(syncs)
    try:
        with _Factories(syncs), _Mode(syncs):
            yield syncs
    finally:
        _ACTIVE.pop()


def host(t: torch.Tensor) -> torch.Tensor:
    """The CPU tensor behind a device tensor (a plain tensor as it is)."""
    return _unwrap(t)
