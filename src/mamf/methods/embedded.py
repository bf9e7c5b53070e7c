"""What the test-time baselines share: a task's support and query embeddings, computed once.

The baselines (Tip-Adapter, GDA, LP++, ...) never change the model; most work on its normalised
image embeddings of the support and query sets and its class prompts' text embeddings. Some
official code keeps the model's raw scale where the rule depends on it: CLAP and TaskRes move the
unnormalised text features (their norm sets how far a step turns a class's direction), and
CoOp's linear probe fits the unnormalised image features. So a task carries both. With both
towers frozen these come from the cached features, so a task costs a few matrix products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mamf.catalogue import Setting
from mamf.features.inputs import ModelInputs, autocast
from mamf.methods.scorer import Scorer
from mamf.models.base import DualEncoder
from mamf.system.errors import Diverged
from mamf.tasks.task import Task


@torch.no_grad()
def raw_images(model: DualEncoder, inputs: ModelInputs, indices: np.ndarray, dim: int,
               batch_size: int = 256) -> torch.Tensor:
    """The model's float32 image embeddings [len(indices), dim] as its head gives them (not
    normalised; an empty set is [0, dim])."""
    chunks = []
    with autocast(inputs.device, inputs.precision):
        for start in range(0, len(indices), batch_size):
            chunks.append(inputs.images(model, indices[start : start + batch_size]).float())
    if not chunks:
        return torch.zeros(0, dim, device=inputs.device)
    return torch.cat(chunks)


def embed_images(model: DualEncoder, inputs: ModelInputs, indices: np.ndarray, dim: int,
                 batch_size: int = 256) -> torch.Tensor:
    """Unit-norm float32 image embeddings [len(indices), dim] (an empty set is [0, dim])."""
    return F.normalize(raw_images(model, inputs, indices, dim, batch_size), dim=-1)


@torch.no_grad()
def raw_texts(model: DualEncoder, inputs: ModelInputs, classes: np.ndarray) -> torch.Tensor:
    """The classes' float32 text embeddings [n, D] as the text tower gives them (not normalised;
    under a prompt ensemble the mean of the prompts' unit embeddings, as `inputs.texts`)."""
    with autocast(inputs.device, inputs.precision):
        return inputs.texts(model, classes).float()


def class_texts(model: DualEncoder, inputs: ModelInputs, classes: np.ndarray) -> torch.Tensor:
    """Unit-norm float32 text embeddings of the classes' prompts [n, D]."""
    return F.normalize(raw_texts(model, inputs, classes), dim=-1)


@dataclass
class Embedded:
    """One task in embedding space: what every baseline adapts on and scores."""

    support: torch.Tensor  # [S, D], unit norm
    support_labels: torch.Tensor  # [S], 0..n-1
    query: torch.Tensor  # [Q, D], unit norm
    query_labels: torch.Tensor  # [Q]
    texts: torch.Tensor  # [n, D], unit norm
    scale: float  # the model's logit scale, exp(log scale)
    # the same before normalising; left out (a task built by hand), the unit ones stand in
    raw_texts: torch.Tensor | None = None  # [n, D]
    raw_support: torch.Tensor | None = None  # [S, D]
    raw_query: torch.Tensor | None = None  # [Q, D]

    def __post_init__(self):
        self.raw_texts = self.texts if self.raw_texts is None else self.raw_texts
        self.raw_support = self.support if self.raw_support is None else self.raw_support
        self.raw_query = self.query if self.raw_query is None else self.raw_query

    @property
    def ways(self) -> int:
        return len(self.texts)

    def zero_shot_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * features @ self.texts.T


@torch.no_grad()
def embed_task(model: DualEncoder, inputs: ModelInputs, task: Task) -> Embedded:
    device = inputs.device
    texts = raw_texts(model, inputs, task.classes)
    dim = texts.shape[1]
    support = raw_images(model, inputs, task.support, dim)
    query = raw_images(model, inputs, task.query, dim)
    return Embedded(F.normalize(support, dim=-1),
                    torch.as_tensor(task.support_labels, device=device),
                    F.normalize(query, dim=-1),
                    torch.as_tensor(task.query_labels, device=device),
                    F.normalize(texts, dim=-1), float(model.logit_scale().float()),
                    texts, support, query)


class EmbeddingScorer(Scorer):
    """A task fitted in embedding space: `logits` maps query embeddings [Q, D] (unit norm) to
    logits [Q, n], closing over what the method fitted on the task's support set.

    Args:
        task: the task, embedded (`embed_task`).
        logits: the fitted classifier, e.g. `lambda f: f @ prototypes.T`.
        fitted: what was fitted, by name (`scorer.fitted["prototypes"]`), to be looked at.
    """

    def __init__(self, task: Embedded, logits: Callable[[torch.Tensor], torch.Tensor],
                 **fitted: object):
        self.task, self.logits, self.fitted = task, logits, fitted

    def predict(self) -> np.ndarray:
        return predicted(self.logits(self.task.query))


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


# CLAP, ZS-LP and TaskRes move the text features as the text tower gives them: their norm (for
# CLIP far from 1) sets how far a step turns a class's direction, so normalising them first
# changes the method (docs/method.md, "CLAP")
TEXT_FEATURES = Setting(
    "baseline.text_features", str, "raw", "the text features CLAP, ZS-LP and TaskRes start from "
    "and move: raw (the text tower's unnormalised output, as their official code) or unit "
    "(normalised first: mamf's earlier variant, whose steps act as if scaled by the norm)",
    choices=("raw", "unit"))


def start_texts(task: Embedded, which: str) -> torch.Tensor:
    """The text features a method moves: the raw ones, or the unit ones (`TEXT_FEATURES`)."""
    return task.raw_texts if which == "raw" else task.texts
