"""CLAP and ZS-LP (Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024) (docs/method.md, "CLAP").

ZS-LP: class prototypes w_c initialised at the prompts' text embeddings t_c, scored as
s * f @ normalise(w).T with the model's logit scale, fit by cross-entropy. CLAP adds the penalty

    mean_c lambda_c * ||w_c - t_c||^2,   lambda_c = mean over class c's support images of the
                                          zero-shot softmax probability of class c

fixed before training (the paper's "l2" constraint), which holds a class that zero-shot already
gets right near its prompt. Full-batch SGD (momentum 0.9), `baseline.clap_lr`, cosine decay over
`baseline.clap_epochs`. No validation, as the paper insists.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.methods.base import Method, register
from mamf.methods.embedded import Embedded, embed_task, one_hot, predicted
from mamf.settings import Setting


def clap_multipliers(task: Embedded) -> torch.Tensor:
    """lambda [n]: each class's mean zero-shot probability of itself on its support images."""
    labels = one_hot(task.support_labels, task.ways)
    probs = task.zero_shot_logits(task.support).softmax(-1)
    return (labels * probs).sum(0) / labels.sum(0).clamp(min=1)


def clap_penalty(prototypes: torch.Tensor, texts: torch.Tensor, lambdas: torch.Tensor):
    return (lambdas * (prototypes - texts).pow(2).sum(-1)).mean()


def prototype_logits(task: Embedded, features: torch.Tensor, prototypes: torch.Tensor):
    return task.scale * features @ F.normalize(prototypes, dim=-1).T


def fit_prototypes(task: Embedded, epochs: int, lr: float, constrained: bool) -> torch.Tensor:
    prototypes = task.texts.clone().requires_grad_(True)
    if epochs == 0 or lr == 0 or len(task.support) == 0:
        return prototypes.detach()
    lambdas = clap_multipliers(task) if constrained else None
    optimizer = torch.optim.SGD([prototypes], lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(prototype_logits(task, task.support, prototypes),
                                   task.support_labels)
            if lambdas is not None:
                loss = loss + clap_penalty(prototypes, task.texts, lambdas)
            loss.backward()
            optimizer.step()
            schedule.step()
    return prototypes.detach()


@register
class CLAP(Method):
    name = "clap"
    adapt_rate, adapt_epochs = "baseline.clap_lr", "baseline.clap_epochs"
    adapt_optimizer = "SGD"
    label = "CLAP"
    summary = "zero-shot-initialised linear probe held near the prompts, class-wise (baseline)"
    colour = "#8c6d31"
    order = 16
    trains = False
    baseline = True
    settings = (
        Setting("baseline.clap_epochs", int, 300, "full-batch SGD epochs, cosine decay (no "
                "validation)", minimum=0),
        Setting("baseline.clap_lr", float, 0.1, "the SGD rate (momentum 0.9)", minimum=0),
    )
    constrained = True

    def adapt(self, model, inputs, task, rng) -> None:
        b = self.config.baseline
        self.task = embed_task(model, inputs, task)
        self.prototypes = fit_prototypes(self.task, b.clap_epochs, b.clap_lr, self.constrained)

    def predict(self, model, inputs, task) -> np.ndarray:
        return predicted(prototype_logits(self.task, self.task.query, self.prototypes))


@register
class ZSLP(CLAP):
    name = "zs-lp"
    label = "ZS-LP"
    summary = "CLAP's zero-shot-initialised linear probe without the constraint (baseline)"
    colour = "#bd9e39"
    order = 17
    constrained = False
