"""APE, training-free (Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive
Prior Refinement", ICCV 2023): Tip-Adapter's cache on a refined subset of channels, its values
weighted by how far zero-shot is from each support label (docs/method.md, "APE").

Channel d scores -w0 * S_d + w1 * V_d: S_d the mean product of channel d over pairs of embeddings
(prompt and support images together) from different classes, V_d the variance of the prompts'
channel d over the classes. The top `baseline.ape_channels` share of channels is kept, and
prompts, keys and queries are renormalised on them (primed). Then

    logits = s * f @ T.T + alpha * exp(-beta * (1 - f' @ K'.T)) @ (L * exp(gamma * KL_i))

KL_i = sum_c L_ic log2(L_ic / softmax(K'_i @ T'.T)_c), with 1e-6 added as the official code does.
alpha, beta, gamma are chosen on dev-split tasks from `baseline.ape_*` grids; the row records them.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from mamf.methods.base import Method, register
from mamf.methods.embedded import Embedded, accuracy, embed_task, one_hot, predicted
from mamf.settings import Setting


def ape_channels(task: Embedded, share: float, weights: list[float]) -> torch.Tensor:
    """Indices of the kept channels, best criterion first."""
    feats = torch.cat([task.texts, task.support])
    labels = torch.cat([torch.arange(task.ways, device=feats.device), task.support_labels])
    sums = one_hot(labels, task.ways).T @ feats  # [n, D] per-class channel sums
    counts = one_hot(labels, task.ways).sum(0)
    pairs = counts.sum() ** 2 - (counts ** 2).sum()  # ordered pairs from different classes
    cross = (sums.sum(0) ** 2 - (sums ** 2).sum(0)) / pairs
    criterion = -weights[0] * cross + weights[1] * task.texts.var(0)
    keep = max(1, round(share * feats.shape[1]))
    return torch.topk(criterion, keep).indices


def ape_parts(task: Embedded, share: float, weights: list[float]):
    """(channels, refined keys, per-key divergence KL_i) for a task's support set."""
    channels = ape_channels(task, share, weights)
    keys = F.normalize(task.support[:, channels], dim=-1)
    texts = F.normalize(task.texts[:, channels], dim=-1)
    values = one_hot(task.support_labels, task.ways)
    probs = (keys @ texts.T).softmax(1)
    divergence = (values * torch.log2((values + 1e-6) / (probs + 1e-6))).sum(1)
    return channels, keys, divergence


def ape_logits(task: Embedded, features, parts, alpha: float, beta: float, gamma: float):
    channels, keys, divergence = parts
    logits = task.zero_shot_logits(features)
    if len(keys) == 0:
        return logits
    affinity = F.normalize(features[:, channels], dim=-1) @ keys.T
    values = one_hot(task.support_labels, task.ways) * torch.exp(gamma * divergence).unsqueeze(1)
    return logits + alpha * torch.exp(-beta * (1 - affinity)) @ values


@register
class APE(Method):
    name = "ape"
    adapt_rate = adapt_epochs = None  # closed form
    label = "APE"
    summary = "Tip-Adapter's cache on refined channels, values weighted by zero-shot (baseline)"
    colour = "#7b4173"
    order = 19
    trains = False
    baseline = True
    tunes_on_dev = True
    settings = (
        Setting("baseline.ape_channels", float, 0.8, "the share of channels kept", minimum=0,
                above=True, maximum=1),
        Setting("baseline.ape_weights", list[float], [0.5, 0.5], "the channel criterion's "
                "weights (similarity across classes, variance across prompts)", length=2),
        Setting("baseline.ape_alphas", list[float], [0.1, 0.5, 1.0, 2.0, 4.0, 7.0], "the alpha "
                "grid searched on dev-split tasks", nonempty=True),
        Setting("baseline.ape_betas", list[float], [0.1, 1.0, 2.0, 3.5, 5.0, 7.0], "the beta grid "
                "searched on dev-split tasks", nonempty=True),
        Setting("baseline.ape_gammas", list[float], [0.0, 0.1, 0.25, 0.5, 0.75], "the gamma grid "
                "searched on dev-split tasks", nonempty=True),
    )

    def __init__(self, config):
        super().__init__(config)
        b = config.baseline
        self.alpha, self.beta, self.gamma = b.ape_alphas[0], b.ape_betas[0], b.ape_gammas[0]

    def parts(self, task: Embedded):
        b = self.config.baseline
        return ape_parts(task, b.ape_channels, b.ape_weights)

    def tune(self, model, inputs, dev_tasks) -> dict:
        b = self.config.baseline
        grid = list(itertools.product(b.ape_alphas, b.ape_betas, b.ape_gammas))
        totals = torch.zeros(len(grid))
        for dev_task in dev_tasks:
            task = embed_task(model, inputs, dev_task)
            parts = self.parts(task)
            for i, (a, be, g) in enumerate(grid):
                totals[i] += accuracy(ape_logits(task, task.query, parts, a, be, g),
                                      task.query_labels)
        best = int(torch.argmax(totals))
        self.alpha, self.beta, self.gamma = grid[best]
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                "dev_tasks": len(dev_tasks),
                "dev_acc": round(float(totals[best]) / max(1, len(dev_tasks)), 6)}

    def adapt(self, model, inputs, task, rng) -> None:
        self.task = embed_task(model, inputs, task)
        self.cache = self.parts(self.task)

    def predict(self, model, inputs, task) -> np.ndarray:
        logits = ape_logits(self.task, self.task.query, self.cache, self.alpha, self.beta,
                            self.gamma)
        return predicted(logits)
