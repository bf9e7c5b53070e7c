"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024): a
linear probe whose class weights blend visual prototypes with the text embeddings, class-wise
(docs/method.md, "LP++").

    logits = f @ W.T + b + alpha_c * (f @ T.T)

W starts at the per-class sums of the support embeddings, alpha at one shared value from the
support's text logits, and both step sizes come from the data, not from a search: W moves by
full-batch SGD (momentum 0.9) with step 4N / lambda_max(F.T F), alpha by plain gradient steps of
size N / (4 max_c sum_i (f_i . t_c)^2) every `baseline.lpp_alpha_every` epochs. No validation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.errors import MamfError
from mamf.methods.base import Method, register
from mamf.methods.embedded import Embedded, embed_task, one_hot, predicted
from mamf.settings import Setting


def lpp_init(task: Embedded) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(W0, alpha0 [n], lr_w, lr_alpha): the official initialisation and step sizes."""
    labels = one_hot(task.support_labels, task.ways)
    count = len(task.support)
    weight = labels.T @ task.support  # class sums, as the official code (not means)
    text_logits = task.support @ task.texts.T
    class_means = (labels.T @ text_logits) / labels.sum(0).clamp(min=1).unsqueeze(1)
    alpha = torch.full((task.ways,), float(250.0 * class_means.mean()),
                       device=task.support.device)
    top = float(torch.linalg.eigvalsh((task.support.T @ task.support).double()).max())
    spread = float((text_logits ** 2).sum(0).max())
    if not top > 0 or not spread > 0:  # zero embeddings (or NaN): the steps would be 1 / 0
        raise MamfError("lp++ sets its step sizes from the support images' embeddings, which "
                        "are all zero (or not finite) here: the model embeds these images as "
                        "nothing")
    lr_w = 4 * count / top
    lr_alpha = count / (4 * spread)
    return weight, alpha, lr_w, lr_alpha


def lpp_logits(task: Embedded, features: torch.Tensor, weight, bias, alpha) -> torch.Tensor:
    return features @ weight.T + bias + alpha * (features @ task.texts.T)


def fit_lpp(task: Embedded, epochs: int, alpha_every: int):
    """(W, b, alpha) after `epochs` full-batch steps on the support set. With no support image
    (base-to-novel's novel classes) there is nothing to probe and no data-driven step: W = 0,
    alpha = 1, which is the zero-shot classifier."""
    if len(task.support) == 0:
        dim = task.texts.shape[1]
        zeros = torch.zeros(task.ways, dim, device=task.texts.device)
        return zeros, torch.zeros(task.ways, device=zeros.device), \
            torch.ones(task.ways, device=zeros.device)
    weight0, alpha0, lr_w, lr_alpha = lpp_init(task)
    weight = weight0.clone().requires_grad_(True)
    bias = torch.zeros(task.ways, device=weight.device, requires_grad=True)
    alpha = alpha0.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=0.9)
    with torch.enable_grad():
        for epoch in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            alpha.grad = None
            logits = lpp_logits(task, task.support, weight, bias, alpha)
            F.cross_entropy(logits, task.support_labels).backward()
            optimizer.step()
            if (epoch + 1) % alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
    return weight.detach(), bias.detach(), alpha.detach()


@register
class LPPlusPlus(Method):
    name = "lp++"
    adapt_rate, adapt_epochs = None, "baseline.lpp_epochs"  # its rates come from the data
    label = "LP++"
    summary = "linear probe blended class-wise with the text embeddings, data-driven steps (baseline)"
    colour = "#637939"
    order = 15
    trains = False
    baseline = True
    settings = (
        Setting("baseline.lpp_epochs", int, 300, "full-batch epochs (no validation)", minimum=0),
        Setting("baseline.lpp_alpha_every", int, 10, "epochs between steps of the blend's "
                "weights", minimum=0, above=True),
    )

    def adapt(self, model, inputs, task, rng) -> None:
        b = self.config.baseline
        self.task = embed_task(model, inputs, task)
        self.params = fit_lpp(self.task, b.lpp_epochs, b.lpp_alpha_every)

    def predict(self, model, inputs, task) -> np.ndarray:
        return predicted(lpp_logits(self.task, self.task.query, *self.params))
