"""Prototype: the nearest class mean of the support embeddings, mixed with the class prompt's
text embedding (docs/method.md, "Baselines").

p_c = normalise(m * normalise(mean of class c's support embeddings) + (1 - m) * t_c), with
m = `baseline.prototype_mix`; a query goes to the class whose p_c is nearest in cosine. m = 1 is
the plain nearest-mean classifier, m = 0 zero-shot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamf.catalogue import Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, EmbeddingScorer, embed_task, one_hot


def prototypes(task: Embedded, mix: float) -> torch.Tensor:
    """[n, D] unit-norm class prototypes; a class with no support image keeps its prompt."""
    counts = one_hot(task.support_labels, task.ways).sum(0)
    sums = one_hot(task.support_labels, task.ways).T @ task.support
    means = F.normalize(sums / counts.clamp(min=1).unsqueeze(1), dim=-1)
    mixed = torch.where(counts.unsqueeze(1) > 0, mix * means + (1 - mix) * task.texts, task.texts)
    return F.normalize(mixed, dim=-1)


@register
class Prototype(TestTimeMethod):
    name = "prototype"
    only_when_named = True
    settings = (Setting("baseline.prototype_mix", float, 0.5, "the support mean's weight against "
                        "the prompt embedding (1: nearest mean only)", minimum=0, maximum=1),)

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        embedded = embed_task(model, inputs, task)
        means = prototypes(embedded, self.config.baseline.prototype_mix)
        return EmbeddingScorer(embedded, lambda f: f @ means.T, prototypes=means)
