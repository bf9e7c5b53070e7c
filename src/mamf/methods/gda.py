"""GDA (Wang et al., "A Hard-to-Beat Baseline for Training-free CLIP-based Adaptation", ICLR 2024):
Gaussian discriminant analysis on the support embeddings beside the zero-shot classifier
(docs/method.md, "GDA").

Class means mu_c, one shared covariance; its precision is estimated as the official code does,
P = D * pinv(S + tr(S) / (N - 1) * I), S the within-class scatter of the N support embeddings.
Then W = mu P, b_c = log(1/n) - mu_c P mu_c / 2 and

    logits = s * f @ T.T + alpha * (f @ W.T + b)

alpha is chosen on dev-split tasks from `baseline.gda_alphas` (the paper searched it on the
validation set); the results row records it. With one image per class the scatter is zero and so
is P: GDA is then exactly zero-shot, which the log says.
"""

from __future__ import annotations

import logging

import torch

from mamf.catalogue import Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, EmbeddingScorer, accuracy, embed_task, one_hot

log = logging.getLogger(__name__)


def gda_classifier(task: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [n, D], b [n]) of the shared-covariance Gaussian discriminant on the support set."""
    labels = one_hot(task.support_labels, task.ways)
    means = (labels.T @ task.support) / labels.sum(0).clamp(min=1).unsqueeze(1)
    centred = (task.support - labels @ means).double()
    scatter = centred.T @ centred
    count, dim = task.support.shape
    shrink = torch.trace(scatter) / max(1, count - 1)
    precision = dim * torch.linalg.pinv(scatter + shrink * torch.eye(dim, dtype=scatter.dtype,
                                                                         device=scatter.device))
    weight = (means.double() @ precision).float()
    # a host 0-dim scalar: CUDA kernels take it beside device tensors
    bias = torch.log(torch.tensor(1.0 / task.ways)) - 0.5 * (weight * means).sum(1)
    return weight, bias


def gda_logits(task: Embedded, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               alpha: float) -> torch.Tensor:
    return task.zero_shot_logits(features) + alpha * (features @ weight.T + bias)


@register
class GDA(TestTimeMethod):
    name = "gda"
    only_when_named = True
    tunes_on_dev = True
    settings = (Setting("baseline.gda_alphas", list[float],
                        [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0], "the grid of the "
                        "discriminant's weight, searched on dev-split tasks", nonempty=True,
                        minimum=0),)

    def __init__(self, config):
        super().__init__(config)
        self.alpha = config.baseline.gda_alphas[0]
        self._warned = False

    def fit(self, task: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._warned and len(task.support) <= task.ways:
            log.warning("gda: one support image per class leaves no within-class scatter; the "
                        "covariance estimate is zero and GDA scores as zero-shot")
            self._warned = True
        return gda_classifier(task)

    def tune(self, model, inputs, dev_tasks) -> dict:
        alphas = self.config.baseline.gda_alphas
        totals = torch.zeros(len(alphas))
        for dev_task in dev_tasks:
            task = embed_task(model, inputs, dev_task)
            weight, bias = self.fit(task)
            for i, a in enumerate(alphas):
                totals[i] += accuracy(gda_logits(task, task.query, weight, bias, a),
                                      task.query_labels)
        best = int(torch.argmax(totals))
        self.alpha = alphas[best]
        return {"alpha": self.alpha, "dev_tasks": len(dev_tasks),
                "dev_acc": round(float(totals[best]) / max(1, len(dev_tasks)), 6)}

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        embedded = embed_task(model, inputs, task)
        weight, bias = self.fit(embedded)
        alpha = self.alpha
        return EmbeddingScorer(embedded, lambda f: gda_logits(embedded, f, weight, bias, alpha),
                               weight=weight, bias=bias)
