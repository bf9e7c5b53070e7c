"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a key-value cache of the support
set's image embeddings beside the zero-shot classifier (docs/method.md, "Baselines").

    logits = s * f @ T.T + alpha * exp(-beta * (1 - f @ K.T)) @ L

f: a query's unit image embedding; T: the prompts' unit text embeddings; s: the model's logit
scale (CLIP's 100, which the official code writes as a constant); K: the support embeddings
(keys); L: their one-hot labels (values). Tip-Adapter-F also fine-tunes K on the support set as
the official code does (AdamW, eps 1e-4, `baseline.tip_f_lr`, `.tip_f_epochs` epochs of shuffled
batches of 256, cosine decay stepped each batch), starting from the support embeddings, with
alpha and beta at `baseline.tip_f_alpha`, `.tip_f_beta`.

alpha and beta are then chosen on dev-split tasks, drawn exactly as the test tasks are: the
official search, beta in the outer loop and alpha in the inner, the first of equal best mean dev
accuracies kept, over the official grid (`baseline.tip_search_scale`, `.tip_search_step`) or an
explicit one (`baseline.tip_alphas`, `.tip_betas`); they are held fixed over the test tasks and
the results row records them. The official code chose Tip-Adapter-F's epoch on the test set, and
searched on the test set in its first release (its issue 11); here no test image is seen before
scoring.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.catalogue import MAX_RATE, Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, EmbeddingScorer, embed_task, one_hot
from mamf.methods.official import BATCH, search_grid, shuffled_batches
from mamf.system.errors import MamfError


def tip_logits(task: Embedded, features: torch.Tensor, keys: torch.Tensor, alpha: float,
               beta: float) -> torch.Tensor:
    """Zero-shot logits plus alpha times the cache's; alpha = 0 is exactly zero-shot."""
    logits = task.zero_shot_logits(features)
    if alpha == 0 or len(keys) == 0:
        return logits
    affinity = features @ keys.T
    cache = torch.exp(-(beta - beta * affinity)) @ one_hot(task.support_labels, task.ways)
    return logits + cache * alpha


def fine_tune_keys(task: Embedded, epochs: int, lr: float, alpha: float, beta: float,
                   rng: np.random.Generator) -> torch.Tensor:
    """Tip-Adapter-F: the cache keys after `epochs` epochs of AdamW steps on shuffled batches of
    256 support images (the last one smaller), the rate decayed by a cosine over every step."""
    keys = task.support.clone()
    if epochs == 0 or lr == 0 or len(keys) == 0:
        return keys
    keys.requires_grad_(True)
    optimizer = torch.optim.AdamW([keys], lr=lr, eps=1e-4)
    per_epoch = -(-len(keys) // BATCH)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * per_epoch)
    with torch.enable_grad():
        for _ in range(epochs):
            for batch in shuffled_batches(rng, len(keys)):
                idx = torch.as_tensor(batch, device=keys.device)
                optimizer.zero_grad(set_to_none=True)
                logits = tip_logits(task, task.support[idx], keys, alpha, beta)
                F.cross_entropy(logits, task.support_labels[idx]).backward()
                optimizer.step()
                schedule.step()
    return keys.detach()


def grid(explicit: list[float] | None, top: float, steps: int, start: float = 0.1) -> list[float]:
    """An explicit grid when one is set, else the official one (`search_grid`)."""
    return list(explicit) if explicit is not None else search_grid(top, steps, start)


def first_best(totals: torch.Tensor) -> tuple[int, ...] | None:
    """The index of the first best total in row-major order (the official nested loops' order,
    which keep a setting only when it beats the best so far, from 0); None when no total is
    above 0 (the official search then keeps its zeros)."""
    if float(totals.max()) <= 0:
        return None
    flat = int(torch.argmax(totals.flatten()))  # torch gives the first of equal maxima
    return tuple(int(i) for i in np.unravel_index(flat, tuple(totals.shape)))


def hits(zero_shot: torch.Tensor, cache: torch.Tensor, alphas: torch.Tensor,
         labels: torch.Tensor) -> torch.Tensor:
    """Accuracy [A] (on the CPU, where the search adds them up) of zero-shot + alpha * cache
    for every alpha at once."""
    alphas = alphas.to(cache.device)
    logits = zero_shot.unsqueeze(0) + cache.unsqueeze(0) * alphas[:, None, None]
    return (logits.argmax(-1) == labels).float().mean(-1).cpu()


# alpha and beta before any search (the official ImageNet config's init_alpha, init_beta): what a
# method that is not tuned on dev tasks scores with
INIT_ALPHA, INIT_BETA = 1.17, 1.0


@register
class TipAdapter(TestTimeMethod):
    name = "tip-adapter"
    only_when_named = True
    tunes_on_dev = True
    settings = (
        Setting("baseline.tip_alphas", list[float] | None, None, "an explicit alpha grid "
                "searched on dev-split tasks (unset: the official grid)", minimum=0,
                nonempty=True),
        Setting("baseline.tip_betas", list[float] | None, None, "an explicit beta grid "
                "searched on dev-split tasks (unset: the official grid)", minimum=0,
                nonempty=True),
        Setting("baseline.tip_search_scale", list[float], [7.0, 3.0], "the official grid's "
                "largest beta and alpha (its search_scale: the ImageNet and Oxford Pets "
                "configs')", minimum=0),
        Setting("baseline.tip_search_step", list[int], [200, 20], "the official grid's numbers "
                "of betas and alphas (its search_step)", minimum=0, above=True),
    )

    def __init__(self, config, alpha: float = INIT_ALPHA, beta: float = INIT_BETA):
        """`alpha`, `beta`: the cache's weight and sharpness until `tune` chooses them (a
        subclass passes its own settings' values)."""
        super().__init__(config)
        b = config.baseline
        if len(b.tip_search_scale) != 2 or len(b.tip_search_step) != 2:
            raise MamfError("config baseline.tip_search_scale and .tip_search_step must each "
                            "hold two values (beta's, then alpha's)")
        self.betas = grid(b.tip_betas, b.tip_search_scale[0], b.tip_search_step[0])
        self.alphas = grid(b.tip_alphas, b.tip_search_scale[1], b.tip_search_step[1])
        self.alpha, self.beta = alpha, beta

    def keys(self, task: Embedded, rng: np.random.Generator) -> torch.Tensor:
        return task.support

    def tune(self, model, inputs, dev_tasks) -> dict:
        alphas = torch.tensor(self.alphas)
        totals = torch.zeros(len(self.betas), len(self.alphas))
        for i, dev_task in enumerate(dev_tasks):
            task = embed_task(model, inputs, dev_task)
            keys = self.keys(task, np.random.default_rng([self.config.seed, 152, i]))
            zero_shot = task.zero_shot_logits(task.query)
            if len(keys) == 0:
                totals += hits(zero_shot, torch.zeros_like(zero_shot), alphas,
                               task.query_labels)
                continue
            affinity = task.query @ keys.T
            values = one_hot(task.support_labels, task.ways)
            for j, beta in enumerate(self.betas):
                cache = torch.exp(-(beta - beta * affinity)) @ values
                totals[j] += hits(zero_shot, cache, alphas, task.query_labels)
        best = first_best(totals)
        self.beta, self.alpha = (0.0, 0.0) if best is None else \
            (self.betas[best[0]], self.alphas[best[1]])
        top = float(totals.max())
        return {"alpha": self.alpha, "beta": self.beta, "dev_tasks": len(dev_tasks),
                "dev_acc": round(top / max(1, len(dev_tasks)), 6)}

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        embedded = embed_task(model, inputs, task)
        keys, alpha, beta = self.keys(embedded, rng), self.alpha, self.beta
        return EmbeddingScorer(embedded, lambda f: tip_logits(embedded, f, keys, alpha, beta),
                               keys=keys)


@register
class TipAdapterF(TipAdapter):
    name = "tip-adapter-f"
    settings = (
        *TipAdapter.settings,
        Setting("baseline.tip_f_epochs", int, 20, "AdamW epochs fine-tuning the cache keys on "
                "the support set, in shuffled batches of 256", minimum=0),
        Setting("baseline.tip_f_lr", float, 1e-3, "the keys' AdamW rate", minimum=0,
                maximum=MAX_RATE),
        Setting("baseline.tip_f_alpha", float, 1.17, "alpha while the keys train (the ImageNet "
                "config's init_alpha)", minimum=0),
        Setting("baseline.tip_f_beta", float, 1.0, "beta while the keys train", minimum=0),
    )

    def __init__(self, config):
        b = config.baseline
        super().__init__(config, b.tip_f_alpha, b.tip_f_beta)

    def keys(self, task: Embedded, rng: np.random.Generator) -> torch.Tensor:
        b = self.config.baseline
        return fine_tune_keys(task, b.tip_f_epochs, b.tip_f_lr, b.tip_f_alpha, b.tip_f_beta,
                              rng)
