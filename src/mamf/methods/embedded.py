"""What the test-time baselines share: a task's support and query embeddings, computed once.

The baselines (linear probe, prototype, Tip-Adapter) never change the model; they work on its
normalised image embeddings of the support and query sets and its class prompts' text
embeddings. With both towers frozen these come from the cached features, so a task costs a few
matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mamf.errors import Diverged
from mamf.inputs import ModelInputs, autocast
from mamf.models.base import DualEncoder
from mamf.tasks import Task


@torch.no_grad()
def embed_images(model: DualEncoder, inputs: ModelInputs, indices: np.ndarray, dim: int,
                 batch_size: int = 256) -> torch.Tensor:
    """Unit-norm float32 image embeddings [len(indices), dim] (an empty set is [0, dim])."""
    chunks = []
    with autocast(inputs.device, inputs.precision):
        for start in range(0, len(indices), batch_size):
            chunks.append(inputs.images(model, indices[start : start + batch_size]).float())
    if not chunks:
        return torch.zeros(0, dim, device=inputs.device)
    return F.normalize(torch.cat(chunks), dim=-1)


@torch.no_grad()
def class_texts(model: DualEncoder, inputs: ModelInputs, classes: np.ndarray) -> torch.Tensor:
    """Unit-norm float32 text embeddings of the classes' prompts [n, D]."""
    with autocast(inputs.device, inputs.precision):
        return F.normalize(inputs.texts(model, classes).float(), dim=-1)


@dataclass
class Embedded:
    """One task in embedding space: what every baseline adapts on and scores."""

    support: torch.Tensor  # [S, D], unit norm
    support_labels: torch.Tensor  # [S], 0..n-1
    query: torch.Tensor  # [Q, D], unit norm
    query_labels: torch.Tensor  # [Q]
    texts: torch.Tensor  # [n, D], unit norm
    scale: float  # the model's logit scale, exp(log scale)

    @property
    def ways(self) -> int:
        return len(self.texts)

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * features @ self.texts.T


@torch.no_grad()
def embed_task(model: DualEncoder, inputs: ModelInputs, task: Task) -> Embedded:
    device = inputs.device
    texts = class_texts(model, inputs, task.classes)
    dim = texts.shape[1]
    return Embedded(embed_images(model, inputs, task.support, dim),
                    torch.as_tensor(task.support_labels, device=device),
                    embed_images(model, inputs, task.query, dim),
                    torch.as_tensor(task.query_labels, device=device), texts,
                    float(model.logit_scale().float()))


def predicted(logits: torch.Tensor) -> np.ndarray:
    """The class (0..n-1) each query image is given: its largest logit's."""
    return finite(logits).argmax(1).cpu().numpy()


def finite(logits: torch.Tensor) -> torch.Tensor:
    """`logits`, refused when any is NaN or infinite: argmax would give every such query class
    0 and a made-up accuracy. What diverged is the test-time fit (the weights it adapts)."""
    if not bool(torch.isfinite(logits).all()):
        raise Diverged("the query images' logits became NaN or infinite: the test-time fit "
                       "diverged; lower the method's test-time rate")
    return logits


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def one_hot(labels: torch.Tensor, ways: int) -> torch.Tensor:
    return F.one_hot(labels, ways).float()
