"""ZS-init probe: mamf's own probe, a logistic-regression head on the unit image embeddings,
initialised from the class prompts' text embeddings and fit by a few Adam steps on each test
task's support set (docs/method.md, "Baselines"). It is not the field's "linear probe" (CoOp's,
`linear-probe-clip`): it starts at zero-shot and stays near it, where CoOp's fits the raw
features from scratch to convergence with a searched regulariser. Until issue 41 it was called
`linear-probe`.

logits = s * normalise(f) @ W.T + b, W initialised to the prompts' unit text embeddings and b to
0, s the model's logit scale: before any step the probe is zero-shot. Full-batch Adam
(`baseline.probe_steps`, `.probe_lr`, `.probe_weight_decay`) minimises the support set's
cross-entropy. The model itself is never changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mamf.catalogue import MAX_RATE, Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, EmbeddingScorer, embed_task


def fit_probe(task: Embedded, steps: int, lr: float,
              weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [n, D], b [n]) after `steps` full-batch Adam steps on the support set."""
    weight = task.texts.clone().requires_grad_(True)
    bias = torch.zeros(task.ways, device=weight.device, requires_grad=True)
    if steps == 0 or lr == 0 or len(task.support) == 0:
        return weight.detach(), bias.detach()
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            logits = task.scale * task.support @ weight.T + bias
            F.cross_entropy(logits, task.support_labels).backward()
            optimizer.step()
    return weight.detach(), bias.detach()


@register
class ZSProbe(TestTimeMethod):
    name = "zs-probe"
    only_when_named = True
    settings = (
        Setting("baseline.probe_steps", int, 100, "full-batch Adam steps on the support set, "
                "from the class prompts' embeddings", minimum=0),
        Setting("baseline.probe_lr", float, 1e-3, "the probe's Adam rate", minimum=0,
                maximum=MAX_RATE),
        Setting("baseline.probe_weight_decay", float, 0.0, "the probe's weight decay", minimum=0,
                maximum=MAX_RATE),
    )

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        b = self.config.baseline
        embedded = embed_task(model, inputs, task)
        weight, bias = fit_probe(embedded, b.probe_steps, b.probe_lr, b.probe_weight_decay)
        return EmbeddingScorer(embedded, lambda f: embedded.scale * f @ weight.T + bias,
                               weight=weight, bias=bias)
