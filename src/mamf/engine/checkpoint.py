"""Training checkpoints: weights, optimiser, data stream (generator, task sampler) and augmentation
RNG, written atomically.

Each checkpoint is a folder `checkpoint-<step>` written under a temporary name, its files and the
folder fsynced, then renamed into place; `latest.json` then points at it (also replaced
atomically), and older folders are removed. A kill or a power cut at any moment leaves either the
previous checkpoint or the new one, never a mix; a temporary folder left by a crash or a full
disk is removed on the next start. Only safetensors and JSON are written, so loading never runs
code, and everything read back is checked first: a damaged checkpoint is one clear error.
"""

from __future__ import annotations

import json
import logging
import re
import reprlib
import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import _remove_duplicate_names, load_file, load_model, save_file

from mamf.system.errors import MamfError, is_int
from mamf.system.io import atomic_write_text, fsync_path, make_folder, writing

log = logging.getLogger(__name__)

LATEST = "latest.json"
MODEL, OPTIMIZER, STATE = "model.safetensors", "optimizer.safetensors", "state.json"
NAME = re.compile(r"checkpoint-\d{9,}")
TIME_CHECK_EVERY = 10  # under torchrun, steps between the ranks' checks of a checkpoint's time
STATE_KEYS = ("step", "losses", "stream_state", "generator_state", "param_groups",
              "optimizer_scalars")


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def tensor_mismatch(path: Path, model: torch.nn.Module) -> str | None:
    """The first tensor of the safetensors file `path` whose dtype or shape differs from the
    model's, described; None when all that the model holds match. Read from the header only:
    load_state_dict would cast another dtype silently (damage that surfaces later as a NaN
    loss) and reports another shape in many lines of torch text."""
    from safetensors import safe_open

    own = model.state_dict()
    with safe_open(str(path), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            if key not in own:
                continue
            part = f.get_slice(key)
            dtype, shape = _DTYPES.get(part.get_dtype()), tuple(part.get_shape())
            if dtype != own[key].dtype:
                return f"{key} is {part.get_dtype()}, the model's is {own[key].dtype}"
            if shape != tuple(own[key].shape):
                return f"{key} has shape {list(shape)}, the model's is {list(own[key].shape)}"
    return None


@dataclass
class Resume:
    step: int
    losses: list[float]
    optimizer_state: dict
    stream_state: dict
    generator_state: torch.Tensor
    # torch's global CPU generator (LoRA dropout drew from it before it had its own); None in
    # older checkpoints
    global_generator_state: torch.Tensor | None = None
    # the run's LoRA-dropout generator (`adapters.SeededDropout`), bytes of any device's state
    dropout_generator_state: list[int] | None = None


def model_snapshot(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's tensors copied to the host, as safetensors' `save_model` would write them
    (a tensor shared under several names kept once, the others named in the metadata)."""
    state = model.state_dict()
    metadata: dict[str, str] = {}
    for kept, removed in _remove_duplicate_names(state).items():
        for name in removed:
            metadata.setdefault(name, kept)
            del state[name]
    return {k: _host_copy(v) for k, v in state.items()}, metadata


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy on the host that training, going on, cannot change."""
    return tensor.detach().to("cpu", copy=True).contiguous()


class Checkpointer:
    """Saves into `folder` every `every` steps, or with `minutes` every that many minutes of
    training; `restore` loads the newest into a model.

    A save copies the state to host memory (the training waits for that alone); with
    `background`, a thread writes and fsyncs it while training goes on, one write at a time, and
    `wait` (which the training loop calls as it ends) joins the last and raises its error."""

    def __init__(self, folder: str | Path, every: int, minutes: float | None = None,
                 background: bool = False):
        self.folder = Path(folder)
        self.every = every
        self.minutes = minutes
        self.background = background
        self.last = time.monotonic()
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def due(self, step: int) -> bool:
        if self.minutes is None:
            return self.every > 0 and step % self.every == 0
        from mamf.parallel import distributed

        if distributed.world_size() > 1 and step % TIME_CHECK_EVERY:
            return False  # the ranks agree through a collective: not every step
        return distributed.from_main(time.monotonic() - self.last >= self.minutes * 60)

    def save(self, step: int, model: torch.nn.Module, optimizer_state: dict,
             stream_state: dict, generator: torch.Generator, losses: list[float],
             dropout: torch.Generator | None = None) -> None:
        """`optimizer_state`: the optimiser's state_dict(), keyed by trainable-parameter index;
        `stream_state`: what the method's data stream has drawn (JSON: generators, task sampler)."""
        tensors, scalars = {}, {}
        for index, entry in optimizer_state["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{key}"] = _host_copy(value)
                else:
                    scalars[f"{index}.{key}"] = value
        meta = {"step": step, "losses": list(losses), "stream_state": stream_state,
                "generator_state": generator.get_state().tolist(),
                "global_generator_state": torch.get_rng_state().tolist(),
                "param_groups": optimizer_state["param_groups"], "optimizer_scalars": scalars,
                **({"dropout_generator_state": dropout.get_state().tolist()} if dropout else {})}
        weights = model_snapshot(model)
        meta = json.loads(json.dumps(meta))  # what the thread writes: nothing the run changes
        self.wait()
        self.last = time.monotonic()
        if not self.background:
            self._write(step, weights, tensors, meta)
            return
        self._writer = threading.Thread(target=self._write_in_background,
                                        args=(step, weights, tensors, meta),
                                        name="mamf-checkpoint")
        self._writer.start()

    def wait(self, raise_error: bool = True) -> None:
        """Until the checkpoint being written is on the disk; its error, if any, raised here."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None and raise_error:
            raise error

    def _write_in_background(self, step: int, weights: tuple, tensors: dict, meta: dict) -> None:
        try:
            self._write(step, weights, tensors, meta)
        except BaseException as e:  # raised by `wait`, in the training's thread
            self._error = e

    def _write(self, step: int, weights: tuple, tensors: dict, meta: dict) -> None:
        make_folder(self.folder)
        name = f"checkpoint-{step:09d}"
        tmp = self.folder / f".{name}.tmp"
        with writing(self.folder):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                tmp.mkdir()
                model_tensors, metadata = weights
                save_file(model_tensors, str(tmp / MODEL),
                          **({"metadata": metadata} if metadata else {}))
                save_file(tensors, str(tmp / OPTIMIZER))
                (tmp / STATE).write_text(json.dumps(meta))
                for file in (MODEL, OPTIMIZER, STATE):  # on the disk before the pointer moves
                    fsync_path(tmp / file)
                fsync_path(tmp)
                final = self.folder / name
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_path(self.folder)
        atomic_write_text(self.folder / LATEST, json.dumps({"checkpoint": name}))
        for old in self.folder.glob("checkpoint-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, model: torch.nn.Module) -> Resume | None:
        """Load the newest checkpoint's weights into `model`; None when there is none.

        Temporary folders left by a save that never finished are removed first. The optimiser
        state comes back unloaded: `load_optimizer` checks it against the optimiser."""
        for partial in self.folder.glob(".checkpoint-*.tmp"):
            log.info("removing a half-written checkpoint %s", partial)
            shutil.rmtree(partial, ignore_errors=True)
        pointer = self.folder / LATEST
        if not (pointer.exists() or pointer.is_symlink()):
            return None
        folder = self.folder / self._pointed(pointer)
        try:
            meta = json.loads((folder / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise self._damaged(f"{folder.name}/{STATE} is unreadable ({e})") from None
        step, losses, stream_state, generator_state = self._check_state(meta, folder.name)
        file = folder / OPTIMIZER
        try:
            flat = load_file(str(file))
            file = folder / MODEL
            mismatch = tensor_mismatch(file, model)
            if mismatch:
                raise self._damaged(f"{folder.name}/{file.name}: {mismatch}")
            missing, unexpected = load_model(model, str(file), strict=False)
        except (OSError, SafetensorError) as e:
            raise self._damaged(f"{folder.name}/{file.name} is unreadable ({e})") from None
        except RuntimeError:  # torch's load_state_dict: a tensor of another shape
            missing, unexpected = ["a tensor of another shape"], []
        if missing or unexpected:
            raise MamfError(f"the checkpoint in {self.folder} does not match this model")
        state: dict = {}
        for key, value in [*flat.items(), *meta["optimizer_scalars"].items()]:
            index, _, name = key.partition(".")
            if not (index.isdigit() and name):
                raise self._damaged(f"optimiser entry {reprlib.repr(key)} is not "
                                    "'<parameter index>.<name>'")
            state.setdefault(int(index), {})[name] = value
        optimizer_state = {"state": state, "param_groups": meta["param_groups"]}
        global_state = None
        if "global_generator_state" in meta:
            global_state = _generator_state(meta["global_generator_state"])
            if global_state is None:
                raise self._damaged(f"{folder.name}/{STATE} holds no valid torch generator state")
        dropout_state = meta.get("dropout_generator_state")
        if dropout_state is not None and not (
                isinstance(dropout_state, list) and all(is_int(x) and 0 <= x < 256
                                                        for x in dropout_state)):
            raise self._damaged(f"{folder.name}/{STATE} holds no valid dropout generator state")
        return Resume(step, losses, optimizer_state, stream_state, generator_state, global_state,
                      dropout_state)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, state: dict,
                       load: Callable[[dict], None] | None = None) -> None:
        """Load a restored optimiser state through `load` (default: the optimiser's own) once it
        is known to fit: this run's hyperparameters, and per parameter the entries this optimiser
        keeps, shaped like the parameter. A mismatch would otherwise crash mid-training."""
        groups = state["param_groups"]
        own = optimizer.state_dict()["param_groups"]
        if _hyperparameters(groups) != _hyperparameters(own):
            raise self._damaged("its optimiser settings are not this run's")
        # how the update runs (fused on a GPU, the loop on a CPU) is this run's own
        state = {**state, "param_groups": [
            {**g, **{k: o[k] for k in IMPLEMENTATION if k in o}} if isinstance(g, dict) else g
            for g, o in zip(groups, own)]}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        layout = _entry_layout(optimizer)
        for index, entry in state["state"].items():
            if index >= len(params) or not _fits(entry, layout, params[index]):
                raise self._damaged(f"its optimiser state for parameter {index} does not fit "
                                    "this model")
        (load or optimizer.load_state_dict)(state)

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _damaged(self, reason: str) -> MamfError:
        return MamfError(f"the checkpoint in {self.folder} is damaged: {reason}; delete it to "
                         "start over")

    def _pointed(self, pointer: Path) -> str:
        """The checkpoint folder `latest.json` names: a `checkpoint-<step>` beside it, nothing
        else (no path leads out of the checkpoints folder)."""
        try:
            data = json.loads(pointer.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise self._damaged(f"{LATEST} is unreadable ({e})") from None
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            raise self._damaged(f"{LATEST} must name a checkpoint-<step> folder beside it, not "
                                f"{reprlib.repr(data)}")
        folder = self.folder / name
        if not folder.is_dir() or folder.resolve().parent != self.folder.resolve():
            raise self._damaged(f"{LATEST} names {name}, which is not a folder in it")
        return name

    def _check_state(self, meta, name: str) -> tuple[int, list[float], dict, torch.Tensor]:
        """state.json's fields, each of the type and size a save writes."""
        if not isinstance(meta, dict):
            raise self._damaged(f"{name}/{STATE} is not a mapping")
        missing = [k for k in STATE_KEYS if k not in meta]
        if missing:
            raise self._damaged(f"{name}/{STATE} lacks {', '.join(missing)}")
        step, losses = meta["step"], meta["losses"]
        if not (is_int(step) and step >= 0 and name == f"checkpoint-{step:09d}"):
            raise self._damaged(f"{name}/{STATE} holds step {reprlib.repr(step)}")
        if not (isinstance(losses, list) and len(losses) == step and
                all(_is_number(x) for x in losses)):
            raise self._damaged(f"{name}/{STATE} does not hold {step} losses")
        stream_state = meta["stream_state"]
        if not _is_stream_state(stream_state):
            raise self._damaged(f"{name}/{STATE} holds no valid numpy generator state")
        generator_state = _generator_state(meta["generator_state"])
        if generator_state is None:
            raise self._damaged(f"{name}/{STATE} holds no valid torch generator state")
        groups, scalars = meta["param_groups"], meta["optimizer_scalars"]
        if not (isinstance(groups, list) and all(isinstance(g, dict) for g in groups) and
                isinstance(scalars, dict)):
            raise self._damaged(f"{name}/{STATE} holds no valid optimiser settings")
        return step, losses, stream_state, generator_state




def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_stream_state(value, top: bool = True) -> bool:
    """A method's stream state: a mapping holding at least one generator state (keys ending in
    `rng`), each a valid numpy state or null; what else it holds the method checks as it loads."""
    if not isinstance(value, dict):
        return False
    for key, item in value.items():
        if key.endswith("rng"):
            if item is not None and not _is_rng_state(item):
                return False
        elif isinstance(item, dict) and not _is_stream_state(item, top=False):
            return False
    return not top or any(key.endswith("rng") for key in value)


def _is_rng_state(value) -> bool:
    """A state the training generator's bit generator takes back exactly as it was saved."""
    scratch = np.random.default_rng().bit_generator
    if not isinstance(value, dict) or value.get("bit_generator") != type(scratch).__name__:
        return False
    try:
        with warnings.catch_warnings():  # numpy warns as it casts a float it is given
            warnings.simplefilter("ignore")
            scratch.state = value
    except (TypeError, ValueError, KeyError, OverflowError, IndexError, AttributeError):
        return False
    return scratch.state == value


def _generator_state(value) -> torch.Tensor | None:
    """The augmentation generator's state (CPU), or None when `value` is not one."""
    scratch = torch.Generator()
    size = len(scratch.get_state())
    if not (isinstance(value, list) and len(value) == size and
            all(is_int(x) and 0 <= x < 256 for x in value)):
        return None
    tensor = torch.tensor(value, dtype=torch.uint8)
    try:
        scratch.set_state(tensor)
    except RuntimeError:
        return None
    return tensor if torch.equal(scratch.get_state(), tensor) else None


IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")
"""Optimiser options that choose how an update is computed, not what it is: a checkpoint
written on a GPU (fused Adam) resumes on a CPU and the other way round."""


def _hyperparameters(groups) -> list:
    """The param groups' hyperparameters as JSON holds them, without the IMPLEMENTATION options."""
    return [{k: v for k, v in g.items() if k not in IMPLEMENTATION} if isinstance(g, dict)
            else g for g in _plain(groups)]


def _plain(value):
    """JSON's view of a value (tuples become lists), as state.json holds it."""
    return json.loads(json.dumps(value))


def _entry_layout(optimizer: torch.optim.Optimizer) -> dict:
    """What this optimiser keeps per parameter, from one step of a fresh copy on a probe."""
    probe = torch.nn.Parameter(torch.zeros(2))
    scratch = type(optimizer)([probe], **optimizer.defaults)
    probe.grad = torch.zeros(2)
    scratch.step()
    return dict(scratch.state[probe])


def _fits(entry: dict, layout: dict, param: torch.Tensor) -> bool:
    """Same names as `layout`; tensors where it has tensors, 0-d where its are (a step count),
    else shaped like `param`; numbers elsewhere."""
    if set(entry) != set(layout):
        return False
    for key, ref in layout.items():
        value = entry[key]
        if not torch.is_tensor(ref):
            if not _is_number(value):
                return False
            continue
        shape = torch.Size([]) if ref.dim() == 0 else param.shape
        if not (torch.is_tensor(value) and value.shape == shape and
                value.dtype.is_floating_point == ref.dtype.is_floating_point):
            return False
    return True
