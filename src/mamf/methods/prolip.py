"""ProLIP (Fahes et al., "Fine-tuning CLIP's Last Visual Projector: A Few-Shot Cornucopia", 2024):
fine-tune only the image tower's final projection on the support set, held near its pretrained
weights (docs/method.md, "ProLIP").

    loss = CE(s * normalise(P(x)) @ T.T) + lambda * ||P - P0||^2,   lambda = 1 / K (K shots)

x the backbone's output before the projection (cached when the backbone is frozen), P the
projection's weight matrices (a bias, where there is one, stays frozen as in the official code).
Full-batch Adam (eps 1e-4) with cosine decay, `baseline.prolip_lr`, `.prolip_epochs`: the paper's
setting without validation. A model with no projection head is refused with one line.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from mamf.catalogue import MAX_RATE, Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import class_texts, predicted
from mamf.methods.scorer import Scorer
from mamf.models.base import ProjectionHeads
from mamf.system.errors import MamfError


@torch.no_grad()
def backbone_features(model, inputs, indices: np.ndarray) -> torch.Tensor:
    """The image tower's outputs before its projection head, from the cache when there is one."""
    if inputs.features is not None and not inputs.image_top_blocks:
        return inputs.frozen_features(indices).float()
    chunks = [model.image_backbone(model.preprocess(inputs.dataset.batch(indices[i : i + 256])))
              for i in range(0, len(indices), 256)]
    return torch.cat(chunks).float()


def projection_weights(model, sample: torch.Tensor) -> list[torch.nn.Parameter]:
    """The weight matrices `image_head` reads (found by which head parameters get a gradient)."""
    heads = list(model.head_parameters())
    flags = [p.requires_grad for p in heads]
    try:
        for p in heads:
            p.requires_grad_(True)
        with torch.enable_grad():
            out = model.image_head(sample[:1]).float().sum()
            grads = torch.autograd.grad(out, heads, allow_unused=True)
    finally:
        for p, flag in zip(heads, flags):
            p.requires_grad_(flag)
    found = [p for p, g in zip(heads, grads) if g is not None and p.ndim >= 2]
    if not found:
        raise MamfError("prolip needs a projection head to fine-tune: the image head has none")
    return found


@contextlib.contextmanager
def swapped(params: list[torch.nn.Parameter], values: list[torch.Tensor]):
    """`params` hold `values` inside the block and their own weights again after it."""
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, v in zip(params, saved):
                p.copy_(v)


def fit_projection(model, params, features, labels, texts, scale, epochs, lr, lam):
    """The projection's weights after `epochs` full-batch Adam steps; the model is unchanged."""
    start = [p.detach().clone() for p in params]
    if epochs == 0 or lr == 0:
        return start
    flags = [p.requires_grad for p in params]
    with swapped(params, start):
        try:
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.Adam(params, lr=lr, eps=1e-4)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
            with torch.enable_grad():
                for _ in range(epochs):
                    optimizer.zero_grad(set_to_none=True)
                    emb = F.normalize(model.image_head(features).float(), dim=-1)
                    loss = F.cross_entropy(scale * emb @ texts.T, labels)
                    loss = loss + lam * sum(((p - s) ** 2).sum() for p, s in zip(params, start))
                    loss.backward()
                    optimizer.step()
                    schedule.step()
            trained = [p.detach().clone() for p in params]
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
    return trained


class Projected(Scorer):
    """A task's query images through the image projection fitted on its support set (`weights`
    swapped into `params` while they are embedded; the model keeps its own weights)."""

    def __init__(self, model, inputs, task, texts: torch.Tensor,
                 params: list[torch.nn.Parameter], weights: list[torch.Tensor]):
        self.model, self.inputs, self.task, self.texts = model, inputs, task, texts
        self.params, self.weights = params, weights

    @torch.no_grad()
    def predict(self) -> np.ndarray:
        feats = backbone_features(self.model, self.inputs, self.task.query)
        with swapped(self.params, self.weights):
            emb = F.normalize(self.model.image_head(feats).float(), dim=-1)
        return predicted(emb @ self.texts.T)


@register
class ProLIP(TestTimeMethod):
    name = "prolip"
    only_when_named = True
    needs = {ProjectionHeads: "a projection head to fine-tune"}
    settings = (
        Setting("baseline.prolip_epochs", int, 300, "full-batch Adam epochs on the image "
                "projection, cosine decay (lambda = 1 / shots)", minimum=0),
        Setting("baseline.prolip_lr", float, 1e-3, "the projection's Adam rate", minimum=0,
                maximum=MAX_RATE),
    )

    def adapt(self, model, inputs, task, rng) -> Projected:
        self.check_model(model)
        b = self.config.baseline
        texts = class_texts(model, inputs, task.classes)
        if len(task.support) == 0:  # base2novel's novel classes: nothing to fit, zero-shot
            return Projected(model, inputs, task, texts, [], [])
        feats = backbone_features(model, inputs, task.support)
        params = projection_weights(model, feats)
        labels = torch.as_tensor(task.support_labels, device=feats.device)
        shots = max(1, round(len(task.support) / len(task.classes)))
        weights = fit_projection(model, params, feats, labels, texts,
                                 float(model.logit_scale().detach()), b.prolip_epochs,
                                 b.prolip_lr, 1.0 / shots)
        return Projected(model, inputs, task, texts, params, weights)
