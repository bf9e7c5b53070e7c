"""Training checkpoints: weights, optimiser, data stream (generator, task sampler) and augmentation
RNG, written atomically.

Each checkpoint is a folder `checkpoint-<step>` written under a temporary name and renamed into
place; `latest.json` then points at it (also replaced atomically), and older folders are removed.
A kill at any moment leaves either the previous checkpoint or the new one, never a mix. Only
safetensors and JSON are written, so loading never runs code.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from mamf.errors import MamfError
from mamf.io import atomic_write_text

LATEST = "latest.json"


@dataclass
class Resume:
    step: int
    losses: list[float]
    optimizer_state: dict
    stream_state: dict
    generator_state: torch.Tensor


class Checkpointer:
    """Saves every `every` steps into `folder`; `restore` loads the newest into a model."""

    def __init__(self, folder: str | Path, every: int):
        self.folder = Path(folder)
        self.every = every

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, model: torch.nn.Module, optimizer_state: dict,
             stream_state: dict, generator: torch.Generator, losses: list[float]) -> None:
        """`optimizer_state`: the optimiser's state_dict(), keyed by trainable-parameter index;
        `stream_state`: what the method's data stream has drawn (JSON: generator and sampler)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"checkpoint-{step:09d}"
        tmp = self.folder / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"))
        state = optimizer_state
        tensors, scalars = {}, {}
        for index, entry in state["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{index}.{key}"] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = {"step": step, "losses": losses, "stream_state": stream_state,
                "generator_state": generator.get_state().tolist(),
                "param_groups": state["param_groups"], "optimizer_scalars": scalars}
        (tmp / "state.json").write_text(json.dumps(meta))
        final = self.folder / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(self.folder / LATEST, json.dumps({"checkpoint": name}))
        for old in self.folder.glob("checkpoint-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, model: torch.nn.Module) -> Resume | None:
        """Load the newest checkpoint's weights into `model`; None when there is none."""
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        try:
            folder = self.folder / json.loads(pointer.read_text())["checkpoint"]
            meta = json.loads((folder / "state.json").read_text())
            missing, unexpected = load_model(model, str(folder / "model.safetensors"),
                                             strict=False)
            flat = load_file(str(folder / "optimizer.safetensors"))
        except (OSError, KeyError, ValueError) as e:
            raise MamfError(f"the checkpoint in {self.folder} is unreadable ({e}); delete it to "
                            "start over") from None
        if missing or unexpected:
            raise MamfError(f"the checkpoint in {self.folder} does not match this model")
        state: dict = {}
        for key, value in [*flat.items(), *meta["optimizer_scalars"].items()]:
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer_state = {"state": state, "param_groups": meta["param_groups"]}
        return Resume(meta["step"], meta["losses"], optimizer_state, meta["stream_state"],
                      torch.tensor(meta["generator_state"], dtype=torch.uint8))

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
