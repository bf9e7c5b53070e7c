"""CLAP and ZS-LP (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024) (docs/method.md, "CLAP").

ZS-LP: class prototypes w_c initialised at the prompts' text features t_c, as the text tower
gives them (unnormalised, `baseline.text_features`), scored as s * normalise(f) @ normalise(w).T
with the model's logit scale, fit by cross-entropy. CLAP adds the penalty

    mean_c lambda_c * ||w_c - t_c||^2,   lambda_c = mean over class c's support images of the
                                          zero-shot softmax probability of class c

fixed before training (the paper's "l2" constraint), which holds a class that zero-shot already
gets right near its prompt. As the official code runs it: SGD (momentum 0.9) at `baseline.clap_lr`
for `baseline.clap_epochs` epochs under Dassl's schedule (one warm-up epoch at 1e-5, then cosine);
each epoch draws its batches of 256 from 20 copies of the support set (the official code's 20
augmented views; mamf does not augment), as many batches as the support set fills (at least one).
No validation, as the paper insists.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.catalogue import MAX_RATE, Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import (
    TEXT_FEATURES,
    Embedded,
    EmbeddingScorer,
    embed_task,
    one_hot,
    start_texts,
)
from mamf.methods.official import BATCH, dassl_rate

VIEWS = 20  # the official code's copies of the support set per epoch (its augmented views)


def clap_multipliers(task: Embedded) -> torch.Tensor:
    """lambda [n]: each class's mean zero-shot probability of itself on its support images."""
    labels = one_hot(task.support_labels, task.ways)
    probs = task.zero_shot_logits(task.support).softmax(-1)
    return (labels * probs).sum(0) / labels.sum(0).clamp(min=1)


def clap_penalty(prototypes: torch.Tensor, texts: torch.Tensor, lambdas: torch.Tensor):
    return (lambdas * (prototypes - texts).pow(2).sum(-1)).mean()


def prototype_logits(task: Embedded, features: torch.Tensor, prototypes: torch.Tensor):
    return task.scale * features @ F.normalize(prototypes, dim=-1).T


def epoch_batches(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """One epoch's batches (indices into the support set): the official loop shuffles VIEWS
    copies of the support set and takes as many batches of 256 as its loader over the support
    set holds (Dassl's: count // 256, at least one)."""
    order = rng.permutation(VIEWS * count) % count
    batches = max(1, count // BATCH)
    return [order[b * BATCH : (b + 1) * BATCH] for b in range(batches)]


def fit_prototypes(task: Embedded, epochs: int, lr: float, constrained: bool,
                   rng: np.random.Generator, texts: torch.Tensor | None = None) -> torch.Tensor:
    """The prototypes after training, starting from `texts` (default: the raw text features)."""
    anchors = task.raw_texts if texts is None else texts
    prototypes = anchors.clone().requires_grad_(True)
    if epochs == 0 or lr == 0 or len(task.support) == 0:
        return prototypes.detach()
    lambdas = clap_multipliers(task) if constrained else None
    optimizer = torch.optim.SGD([prototypes], lr=dassl_rate(lr, 0, epochs), momentum=0.9)
    with torch.enable_grad():
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = dassl_rate(lr, epoch, epochs)
            for batch in epoch_batches(rng, len(task.support)):
                idx = torch.as_tensor(batch, device=task.support.device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(prototype_logits(task, task.support[idx], prototypes),
                                       task.support_labels[idx])
                if lambdas is not None:
                    loss = loss + clap_penalty(prototypes, anchors, lambdas)
                loss.backward()
                optimizer.step()
    return prototypes.detach()


@register
class CLAP(TestTimeMethod):
    name = "clap"
    only_when_named = True
    settings = (
        Setting("baseline.clap_epochs", int, 300, "SGD epochs, Dassl's warm-up and cosine "
                "schedule (no validation)", minimum=0),
        Setting("baseline.clap_lr", float, 0.1, "the SGD rate (momentum 0.9)", minimum=0,
                maximum=MAX_RATE),
        TEXT_FEATURES,
    )
    constrained = True

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        b = self.config.baseline
        embedded = embed_task(model, inputs, task)
        prototypes = fit_prototypes(embedded, b.clap_epochs, b.clap_lr, self.constrained, rng,
                                    start_texts(embedded, b.text_features))
        return EmbeddingScorer(embedded, lambda f: prototype_logits(embedded, f, prototypes),
                               prototypes=prototypes)


@register
class ZSLP(CLAP):
    name = "zs-lp"
    constrained = False
