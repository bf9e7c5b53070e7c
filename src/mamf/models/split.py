"""Running a transformers tower's own forward over a slice of its layers.

Partial unfreezing splits a tower at a layer boundary (`SplitImageTower.image_bottom` /
`image_top`, `SplitTextTower.text_bottom` / `text_top`). Calling the model's own forward with its
layer list cut, and its embeddings standing in for the cached boundary, keeps the model's own
attention masks, norms and pooling, whatever the transformers version, instead of copying them
here. `check` refuses a split the model cannot make.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mamf.models.base import DualEncoder, SplitImageTower, SplitTextTower, require
from mamf.system.errors import MamfError


class Given(nn.Module):
    """Stands in for a tower's embeddings: returns the cached boundary however it is called."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.value


@contextlib.contextmanager
def swapped(module: nn.Module, **replacements: nn.Module) -> Iterator[None]:
    """Replace submodules of `module` by name for the block; the originals come back after it,
    also on an error."""
    originals = {name: getattr(module, name) for name in replacements}
    try:
        for name, replacement in replacements.items():
            setattr(module, name, replacement)
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)


def layers(owner: nn.Module, name: str, start: int, stop: int | None = None) -> nn.ModuleList:
    """Layers start..stop of `owner.<name>` (the same modules, not copies)."""
    return nn.ModuleList(list(getattr(owner, name))[start:stop])


def parameters(*modules: nn.Module) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def check(model: DualEncoder, tower: str, k: int) -> None:
    """`train.unfreeze_image_blocks` (`tower` "image") or `unfreeze_text_layers` ("text") = k > 0:
    the model's family splits that tower and it has at least k blocks (layers); one MamfError
    line otherwise."""
    image = tower == "image"
    key = "unfreeze_image_blocks" if image else "unfreeze_text_layers"
    require(model, SplitImageTower if image else SplitTextTower, f"train.{key}={k}")
    n = model.image_blocks() if image else model.text_layers()
    if k > n:
        unit = "blocks" if image else "layers"
        raise MamfError(f"train.{key}={k} is more than the {n} {unit} of "
                        f"{type(model).__name__}'s {tower} tower")
