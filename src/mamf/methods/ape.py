"""APE, training-free (Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive
Prior Refinement", ICCV 2023): Tip-Adapter's cache on a refined subset of channels, its values
weighted by how far zero-shot is from each support label (docs/method.md, "APE").

Channel d scores -w0 * S_d + w1 * V_d: S_d the mean product of channel d over pairs of embeddings
(prompt and support images together) from different classes, V_d the variance of the prompts'
channel d over the classes. The top `baseline.ape_channels` share of channels is kept, and
prompts, keys and queries are renormalised on them (primed). Then

    logits = s * f @ T.T + alpha * exp(-beta * (1 - f' @ K'.T)) @ (L * exp(gamma * KL_i))

KL_i = sum_c L_ic log2(L_ic / softmax(K'_i @ T'.T)_c), with 1e-6 added as the official code does.
alpha, beta, gamma are chosen on dev-split tasks by the official search: beta in the outer loop,
then alpha, then gamma, the first of equal best mean dev accuracies kept, over the official grid
(`baseline.ape_search_scale`, `.ape_search_step`, the Caltech101 config's) or explicit ones
(`baseline.ape_alphas`, `.ape_betas`, `.ape_gammas`); the row records them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamf.catalogue import Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, EmbeddingScorer, embed_task, one_hot
from mamf.methods.tip_adapter import first_best, grid, hits
from mamf.system.errors import MamfError


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
    values = one_hot(task.support_labels, task.ways) * torch.exp(divergence * gamma).unsqueeze(1)
    return logits + (torch.exp(-(beta - beta * affinity)) @ values) * alpha


@register
class APE(TestTimeMethod):
    name = "ape"
    only_when_named = True
    tunes_on_dev = True
    settings = (
        Setting("baseline.ape_channels", float, 0.78125, "the share of channels kept (the "
                "official 800 of RN50's 1024)", minimum=0, above=True, maximum=1),
        Setting("baseline.ape_weights", list[float], [0.5, 0.5], "the channel criterion's "
                "weights (similarity across classes, variance across prompts)", length=2),
        Setting("baseline.ape_alphas", list[float] | None, None, "an explicit alpha grid "
                "searched on dev-split tasks (unset: the official grid)", nonempty=True),
        Setting("baseline.ape_betas", list[float] | None, None, "an explicit beta grid "
                "searched on dev-split tasks (unset: the official grid)", nonempty=True),
        Setting("baseline.ape_gammas", list[float] | None, None, "an explicit gamma grid "
                "searched on dev-split tasks (unset: the official grid)", nonempty=True),
        Setting("baseline.ape_search_scale", list[float], [7.0, 7.0, 1.0], "the official grid's "
                "largest beta, alpha and gamma (its search_scale: the Caltech101 config's)",
                minimum=0),
        Setting("baseline.ape_search_step", list[int], [200, 20, 20], "the official grid's "
                "numbers of betas, alphas and gammas (its search_step)", minimum=0, above=True),
    )

    def __init__(self, config):
        super().__init__(config)
        b = config.baseline
        if len(b.ape_search_scale) != 3 or len(b.ape_search_step) != 3:
            raise MamfError("config baseline.ape_search_scale and .ape_search_step must each "
                            "hold three values (beta's, alpha's, then gamma's)")
        scale, step = b.ape_search_scale, b.ape_search_step
        self.betas = grid(b.ape_betas, scale[0], step[0])
        self.alphas = grid(b.ape_alphas, scale[1], step[1])
        self.gammas = grid(b.ape_gammas, scale[2], step[2], start=0.0)
        self.alpha, self.beta, self.gamma = 0.0, 0.0, 0.0

    def parts(self, task: Embedded):
        b = self.config.baseline
        return ape_parts(task, b.ape_channels, b.ape_weights)

    def tune(self, model, inputs, dev_tasks) -> dict:
        alphas = torch.tensor(self.alphas)
        totals = torch.zeros(len(self.betas), len(self.alphas), len(self.gammas))
        for dev_task in dev_tasks:
            task = embed_task(model, inputs, dev_task)
            zero_shot = task.zero_shot_logits(task.query)
            if len(task.support) == 0:
                totals += hits(zero_shot, torch.zeros_like(zero_shot), alphas,
                               task.query_labels)[None, :, None]
                continue
            channels, keys, divergence = self.parts(task)
            affinity = F.normalize(task.query[:, channels], dim=-1) @ keys.T
            values = one_hot(task.support_labels, task.ways)
            weighted = [values * torch.exp(divergence * g).unsqueeze(1) for g in self.gammas]
            for j, beta in enumerate(self.betas):
                kernel = torch.exp(-(beta - beta * affinity))
                for k, soft in enumerate(weighted):
                    totals[j, :, k] += hits(zero_shot, kernel @ soft, alphas, task.query_labels)
        best = first_best(totals)
        if best is not None:
            self.beta, self.alpha, self.gamma = (self.betas[best[0]], self.alphas[best[1]],
                                                 self.gammas[best[2]])
        return {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma,
                "dev_tasks": len(dev_tasks),
                "dev_acc": round(float(totals.max()) / max(1, len(dev_tasks)), 6)}

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        embedded = embed_task(model, inputs, task)
        cache, chosen = self.parts(embedded), (self.alpha, self.beta, self.gamma)
        return EmbeddingScorer(embedded, lambda f: ape_logits(embedded, f, cache, *chosen),
                               cache=cache)
