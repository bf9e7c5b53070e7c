"""TaskRes (Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023): a learned
residual added to the frozen text classifier (docs/method.md, "TaskRes").

    logits = s * normalise(f) @ normalise(T + a * R).T,   R initialised to zero,
             a = `baseline.taskres_scale`, T the text features as the text tower gives them
             (unnormalised, `baseline.text_features`)

As the official code and script run it: Adam (weight decay 5e-4, Dassl's default) at
`baseline.taskres_lr` under Dassl's schedule (one warm-up epoch at 1e-5, then cosine), in shuffled
batches of 256 (the last incomplete one dropped once the support set fills one), for
`baseline.taskres_epochs` epochs, or `.taskres_epochs_low_shot` at 1 to 4 shots. Before any step
the method is zero-shot. The paper fixes a and the rate per dataset and searches neither.
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
    start_texts,
)
from mamf.methods.official import dassl_rate, shuffled_batches

LOW_SHOT = 4  # the official script trains `taskres_epochs_low_shot` epochs up to this many shots


def taskres_classifier(texts: torch.Tensor, residual: torch.Tensor, scale: float) -> torch.Tensor:
    return F.normalize(texts + scale * residual, dim=-1)


def fit_residual(task: Embedded, epochs: int, lr: float, scale: float, weight_decay: float,
                 rng: np.random.Generator, texts: torch.Tensor | None = None) -> torch.Tensor:
    """R after training, on `texts` (default: the raw text features)."""
    texts = task.raw_texts if texts is None else texts
    residual = torch.zeros_like(texts, requires_grad=True)
    if epochs == 0 or lr == 0 or len(task.support) == 0:
        return residual.detach()
    optimizer = torch.optim.Adam([residual], lr=dassl_rate(lr, 0, epochs),
                                 weight_decay=weight_decay)
    with torch.enable_grad():
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = dassl_rate(lr, epoch, epochs)
            for batch in shuffled_batches(rng, len(task.support), drop_last=True):
                idx = torch.as_tensor(batch, device=task.support.device)
                optimizer.zero_grad(set_to_none=True)
                logits = task.scale * task.support[idx] @ taskres_classifier(
                    texts, residual, scale).T
                F.cross_entropy(logits, task.support_labels[idx]).backward()
                optimizer.step()
    return residual.detach()


@register
class TaskRes(TestTimeMethod):
    name = "taskres"
    only_when_named = True
    settings = (
        Setting("baseline.taskres_epochs", int, 200, "Adam epochs on the residual at more than "
                "4 shots, Dassl's warm-up and cosine schedule (no validation)", minimum=0),
        Setting("baseline.taskres_epochs_low_shot", int, 100, "the epochs at 1 to 4 shots (the "
                "official script's)", minimum=0),
        Setting("baseline.taskres_lr", float, 2e-3, "the residual's Adam rate", minimum=0,
                maximum=MAX_RATE),
        Setting("baseline.taskres_weight_decay", float, 5e-4, "Adam's weight decay (Dassl's "
                "default, which the official configs keep)", minimum=0),
        Setting("baseline.taskres_scale", float, 0.5, "the residual's scale a"),
        TEXT_FEATURES,
    )

    def epochs(self) -> int:
        b = self.config.baseline
        return b.taskres_epochs_low_shot if self.config.data.shots <= LOW_SHOT else \
            b.taskres_epochs

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        b = self.config.baseline
        embedded = embed_task(model, inputs, task)
        texts = start_texts(embedded, b.text_features)
        residual = fit_residual(embedded, self.epochs(), b.taskres_lr, b.taskres_scale,
                                b.taskres_weight_decay, rng, texts)
        classifier = taskres_classifier(texts, residual, b.taskres_scale)
        return EmbeddingScorer(embedded, lambda f: embedded.scale * f @ classifier.T,
                               residual=residual)
