"""WiSE-FT (Wortsman et al. 2022): score a mix of the zero-shot and the trained weights.

`metatest.interpolate: [alpha, ...]` meta-tests theta(alpha) = (1 - alpha) * theta_0 + alpha *
theta_1 for each alpha, before each test task's adaptation; theta_0 is the model as its training
started (built, heads as `train.heads` set them: with `random`, alpha = 0 is the random-head
model), theta_1 the trained model. Only trainable parameters differ, so only they are mixed.
With LoRA the adapter's update B A is scaled: B mixes from its zero start and A keeps its trained
value, so theta(alpha) adds alpha * B A (a per-matrix mix of A and B would not be linear in
alpha). `torch.lerp` is exact at both ends: alpha = 0 gives theta_0 and alpha = 1 theta_1, bit
for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from mamf import methods
from mamf.catalogue import Config
from mamf.models.adapters import is_lora_a


def alphas(config: Config, method: str) -> list[float | None]:
    """The alphas a method's rows are measured at; None: the trained weights as they are
    (no interpolation asked for, or a method that does not train or mix its weights)."""
    kind = methods.method_class(method)
    if not (issubclass(kind, methods.TrainedMethod) and kind.interpolates) \
            or not config.metatest.interpolate:
        return [None]
    return list(config.metatest.interpolate)


def starting_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable parameters: theta_0 when taken as training starts."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class Interpolation:
    """Holds theta_0 and theta_1 of `model`'s trainable parameters; `at(alpha)` sets the mix for
    the block and puts the trained weights back after it."""

    def __init__(self, model: torch.nn.Module, start: dict[str, torch.Tensor]):
        self.live = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.trained = [p.detach().clone() for _, p in self.live]
        self.start = [t if is_lora_a(n) else start[n].to(p.device, p.dtype)
                      for (n, p), t in zip(self.live, self.trained)]

    @contextlib.contextmanager
    def at(self, alpha: float | None) -> Iterator[None]:
        if alpha is None:
            yield
            return
        with torch.no_grad():
            for (_, p), start, end in zip(self.live, self.start, self.trained):
                p.copy_(torch.lerp(start, end, float(alpha)))
        try:
            yield
        finally:
            with torch.no_grad():
                for (_, p), end in zip(self.live, self.trained):
                    p.copy_(end)
