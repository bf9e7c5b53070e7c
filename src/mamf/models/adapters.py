"""`train.adapter=lora`: low-rank adapters (Hu et al. 2021, LoRA) put into a model by `peft`.

`attach` puts peft's LoRA layers on the target layers of the towers that train (a tower whose
outputs are cached, `train.freeze_image_backbone` / `freeze_text_tower`, gets none: it never
runs in a step), draws their weights from the run's seed (A as peft draws it, B zero, so the
model starts exactly as built) and leaves trainable only the adapters, the logit scale and, with
`train.heads=random`, the fresh heads. Everything else (methods, checkpoints, DDP, the
meta-test's snapshots) sees trainable parameters as before. A finished run keeps only those
trainable tensors, `adapter.safetensors`; `load_trained` puts them back on a fresh model.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mamf.catalogue import unfrozen
from mamf.models import split
from mamf.models.base import DualEncoder, ProjectionHeads, require
from mamf.system.errors import MamfError, shown

if TYPE_CHECKING:
    from mamf.catalogue import TrainConfig  # built from the declared settings when first used

log = logging.getLogger(__name__)

ADAPTER = "adapter.safetensors"


def enabled(train: TrainConfig) -> bool:
    return train.adapter == "lora"


def _adaptable(module: nn.Module) -> bool:
    """peft's LoRA takes linear layers and convolutions; it builds A and B as the layer's own
    class, so a convolution must be a plain 1x1 `nn.Conv2d` (no padding rules of its own)."""
    if isinstance(module, nn.Linear):
        return True
    return type(module) is nn.Conv2d and module.kernel_size == (1, 1) and module.groups == 1


def target_names(model: DualEncoder, train: TrainConfig) -> list[str]:
    """Full names of the layers to adapt: each target matched as peft matches one (the whole
    name or its last dotted parts), in the towers that train."""
    given = bool(train.lora_targets)
    targets = list(train.lora_targets) or list(model.lora_targets)
    name = model.describe().get("name", type(model).__name__)
    if not targets:
        raise MamfError(f"model {name} has no default LoRA targets: set train.lora_targets")
    frozen = {id(p) for p in cached_parameters(model, train)}
    names: list[str] = []
    for target in targets:
        hits = [n for n, m in model.named_modules()
                if (n == target or n.endswith("." + target)) and _adaptable(m)]
        if not hits:
            raise MamfError(f"train.lora_targets: {shown(target)} names no linear layer or 1x1 "
                            f"convolution of model {name}")
        live = [n for n in hits
                if not any(id(p) in frozen for p in model.get_submodule(n).parameters())]
        if given and not live:
            raise MamfError(f"train.lora_targets: every {shown(target)} layer lies in a frozen "
                            "tower, whose outputs are cached: LoRA there would never train")
        names += [n for n in live if n not in names]
    if not names:
        raise MamfError("train.adapter=lora has nothing to adapt: both towers are frozen and "
                        "cached (train.freeze_image_backbone, train.freeze_text_tower)")
    return names


def cached_parameters(model: DualEncoder, train: TrainConfig) -> list[torch.nn.Parameter]:
    """The parameters below each tower's boundary (`train.unfreeze_*`, or a whole frozen tower):
    their outputs are cached, so an adapter there would never be used."""
    image_k, text_k = unfrozen(train)
    out = []
    for k, tower, parameters in ((image_k, "image", model.image_backbone_parameters),
                                 (text_k, "text", model.text_parameters)):
        if k is None:
            continue
        keep: set[int] = set()
        if k:
            split.check(model, tower, k)
            top = model.image_top_parameters if tower == "image" else model.text_top_parameters
            keep = {id(p) for p in top(k)}
        out += [p for p in parameters() if id(p) not in keep]
    return out


def attach(model: DualEncoder, train: TrainConfig, seed: int) -> None:
    """Put LoRA on `model` in place (it stays the same DualEncoder) and set what trains."""
    from peft import LoraConfig, inject_adapter_in_model

    names = target_names(model, train)
    check_rank(model, names, train.lora_rank)
    config = LoraConfig(r=train.lora_rank, lora_alpha=train.lora_alpha,
                        lora_dropout=train.lora_dropout, target_modules=names, bias="none")
    with torch.random.fork_rng(devices=[]):  # peft draws A from the global generator
        inject_adapter_in_model(config, model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in lora_parameters(model):
        p.requires_grad_(True)
    for p in model.loss_parameters():  # the temperature (and SigLIP's logit bias)
        p.requires_grad_(True)
    if train.heads == "random":
        name = model.describe().get("name", type(model).__name__)
        require(model, ProjectionHeads, f"train.heads=random cannot go with model {name}")
        for p in model.head_parameters():
            p.requires_grad_(True)
    initialise(model, seed)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("lora: rank %d on %d layers; %d trainable values", train.lora_rank, len(names), count)


def layer_rank(module: nn.Module) -> int:
    """The most a LoRA rank can add to a layer: the smaller of its input and output sizes."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    return min(module.in_channels, module.out_channels)


def check_rank(model: DualEncoder, names: list[str], rank: int) -> None:
    """Refuse a rank above a target layer's dimensions before anything is allocated (A and B of
    rank r hold r * (in + out) values; a rank past min(in, out) adds nothing but memory)."""
    sizes = {n: layer_rank(model.get_submodule(n)) for n in names}
    name = min(sizes, key=sizes.get)
    if rank > sizes[name]:
        raise MamfError(f"train.lora_rank={shown(rank)} is more than layer {name} can take: at "
                        f"most {sizes[name]} (the smaller of its input and output sizes)")


def lora_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(A, B) of every LoRA layer, in module order."""
    from peft.tuners.lora import LoraLayer

    return [(m.lora_A[key], m.lora_B[key]) for m in model.modules() if isinstance(m, LoraLayer)
            for key in m.lora_A]


class SeededDropout(nn.Module):
    """Dropout whose masks come from a run's own generator, as `nn.Dropout` computes them
    (keep with probability 1 - p, scale by 1 / (1 - p)). torch's global generators are shared by
    every thread, and a GPU's is not in a checkpoint: a run's own generator makes a resumed run
    the run it resumes, and two runs in two threads the runs they are one after the other."""

    def __init__(self, p: float, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep.div_(1 - self.p)


def dropout_generator(device: torch.device, seed: int) -> torch.Generator:
    """A run's dropout generator, on the device the masks are drawn on (a CPU's otherwise)."""
    generator = torch.Generator(device) if device.type == "cuda" else torch.Generator()
    return generator.manual_seed(seed)


def dropout_active(model: nn.Module, on: bool, generator: torch.Generator | None = None) -> None:
    """LoRA's dropout draws only in training steps, from `generator` (the run's, kept in its
    checkpoints) once given; the rest of the model stays in eval mode, and test-time adaptation
    runs without it."""
    from peft.tuners.lora import LoraLayer

    for m in model.modules():
        if isinstance(m, LoraLayer):
            for key, d in m.lora_dropout.items():
                if generator is not None and isinstance(d, nn.Dropout):
                    d = m.lora_dropout[key] = SeededDropout(d.p, generator)
                elif generator is not None and isinstance(d, SeededDropout):
                    d.generator = generator
                d.train(on)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for pair in lora_layers(model) for layer in pair for p in layer.parameters()]


def is_lora_a(name: str) -> bool:
    return ".lora_A." in f".{name}"


@torch.no_grad()
def initialise(model: DualEncoder, seed: int) -> None:
    """A drawn as peft draws it (Kaiming-uniform), but from `seed`'s own stream; B zero: the
    adapted model computes exactly what the model alone computes."""
    state = int(np.random.SeedSequence([seed, 13]).generate_state(1, np.uint64)[0] >> 1)
    generator = torch.Generator().manual_seed(state)
    for a, b in lora_layers(model):
        fresh = torch.empty(a.weight.shape, dtype=a.weight.dtype)
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        a.weight.copy_(fresh)
        nn.init.zeros_(b.weight)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a LoRA run keeps: every trainable tensor by its name in the model."""
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_trained(model: nn.Module, path: Path) -> None:
    """Put a run's adapter.safetensors on a model already `attach`ed with the run's settings."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise MamfError(f"cannot read {path}: {e}") from None
    live = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != set(live) or any(state[n].shape != p.shape or state[n].dtype != p.dtype
                                      for n, p in live.items()):
        raise MamfError(f"{path} does not match the adapters of this run's model")
    for n, p in live.items():
        p.copy_(state[n])
