"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the support
set's image embeddings beside the zero-shot classifier (docs/method.md, "Baselines").

    logits = s * f @ T.T + alpha * exp(-beta * (1 - f @ K.T)) @ L

f: a query's unit image embedding; T: the prompts' unit text embeddings; s: the model's logit
scale; K: the support embeddings (keys); L: their one-hot labels (values). Tip-Adapter-F also
fine-tunes K on the support set (AdamW, cosine schedule, `baseline.tip_f_*`), starting from the
support embeddings, with alpha and beta at their initial values.

alpha and beta are chosen on dev-split tasks, drawn exactly as the test tasks are, from the grid
`baseline.tip_alphas` x `baseline.tip_betas` (best mean dev accuracy; ties go to the first in
grid order), then held fixed over the test tasks; the results row records them. The official
code searched them on the test set (its issue 11); here no test image is seen before scoring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.methods.base import Method, register
from mamf.methods.embedded import Embedded, accuracy, embed_task, one_hot, predicted
from mamf.settings import Setting


def tip_logits(task: Embedded, features: torch.Tensor, keys: torch.Tensor, alpha: float,
               beta: float) -> torch.Tensor:
    """Zero-shot logits plus alpha times the cache's; alpha = 0 is exactly zero-shot."""
    logits = task.zero_shot_logits(features)
    if alpha == 0 or len(keys) == 0:
        return logits
    affinity = features @ keys.T
    cache = torch.exp(-beta * (1 - affinity)) @ one_hot(task.support_labels, task.ways)
    return logits + alpha * cache


def fine_tune_keys(task: Embedded, epochs: int, lr: float, alpha: float,
                   beta: float) -> torch.Tensor:
    """Tip-Adapter-F: the cache keys after `epochs` full-batch AdamW steps on the support set."""
    keys = task.support.clone()
    if epochs == 0 or lr == 0 or len(keys) == 0:
        return keys
    keys.requires_grad_(True)
    optimizer = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            logits = tip_logits(task, task.support, keys, alpha, beta)
            F.cross_entropy(logits, task.support_labels).backward()
            optimizer.step()
            schedule.step()
    return keys.detach()


@register
class TipAdapter(Method):
    name = "tip-adapter"
    adapt_rate = adapt_epochs = None  # its cache is built, not trained
    label = "Tip-Adapter"
    summary = "training-free cache of support embeddings; alpha, beta chosen on dev (baseline)"
    colour = "#17becf"
    order = 12
    trains = False
    baseline = True
    tunes_on_dev = True
    settings = (
        Setting("baseline.tip_alphas", list[float], [0.1, 0.5, 1.0, 2.0, 3.0], "the alpha grid "
                "searched on dev-split tasks", minimum=0, nonempty=True),
        Setting("baseline.tip_betas", list[float], [1.0, 3.0, 5.0, 7.0], "the beta grid searched "
                "on dev-split tasks", minimum=0, nonempty=True),
    )

    def __init__(self, config):
        super().__init__(config)
        b = config.baseline
        self.alpha, self.beta = b.tip_f_alpha, b.tip_f_beta

    def keys(self, task: Embedded) -> torch.Tensor:
        return task.support

    def tune(self, model, inputs, dev_tasks) -> dict:
        b = self.config.baseline
        grid = [(a, be) for a in b.tip_alphas for be in b.tip_betas]
        totals = torch.zeros(len(grid))
        for dev_task in dev_tasks:
            task = embed_task(model, inputs, dev_task)
            keys = self.keys(task)
            for i, (a, be) in enumerate(grid):
                totals[i] += accuracy(tip_logits(task, task.query, keys, a, be),
                                      task.query_labels)
        best = int(torch.argmax(totals))  # the first of equal maxima
        self.alpha, self.beta = grid[best]
        return {"alpha": self.alpha, "beta": self.beta, "dev_tasks": len(dev_tasks),
                "dev_acc": round(float(totals[best]) / max(1, len(dev_tasks)), 6)}

    def adapt(self, model, inputs, task, rng) -> None:
        self.task = embed_task(model, inputs, task)
        self.cache_keys = self.keys(self.task)

    def predict(self, model, inputs, task) -> np.ndarray:
        logits = tip_logits(self.task, self.task.query, self.cache_keys, self.alpha, self.beta)
        return predicted(logits)


@register
class TipAdapterF(TipAdapter):
    name = "tip-adapter-f"
    adapt_rate, adapt_epochs = "baseline.tip_f_lr", "baseline.tip_f_epochs"
    adapt_optimizer = "AdamW"
    label = "Tip-Adapter-F"
    summary = "Tip-Adapter with cache keys fine-tuned on the support set (baseline)"
    colour = "#bcbd22"
    order = 13
    settings = (
        *TipAdapter.settings,
        Setting("baseline.tip_f_epochs", int, 20, "full-batch AdamW epochs fine-tuning the cache "
                "keys on the support set", minimum=0),
        Setting("baseline.tip_f_lr", float, 1e-3, "the keys' AdamW rate", minimum=0),
        Setting("baseline.tip_f_alpha", float, 1.0, "alpha while the keys train", minimum=0),
        Setting("baseline.tip_f_beta", float, 1.0, "beta while the keys train", minimum=0),
    )

    def keys(self, task: Embedded) -> torch.Tensor:
        b = self.config.baseline
        return fine_tune_keys(task, b.tip_f_epochs, b.tip_f_lr, b.tip_f_alpha, b.tip_f_beta)
