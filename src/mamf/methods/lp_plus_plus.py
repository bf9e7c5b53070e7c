"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024): a
linear probe whose class weights blend visual prototypes with the text embeddings, class-wise
(docs/method.md, "LP++").

    logits = f @ W.T + b + alpha_c * (f @ T.T)

As the official code runs it: W starts at the per-class sums of the support embeddings, b as
torch's linear layer starts it (uniform in +-1/sqrt(D), drawn from a stream of the run's seed and
the task's number of classes, so that a dev task and a test task of one support set start alike,
as the official code's one run does for validation and test), alpha
at 250 times the mean over classes of the class's images' similarity to their own prompt; the step
sizes come from the data, not from a search: W and b move by full-batch SGD (momentum 0.9) with
step 4N / lambda_max(F.T F), alpha by a gradient step of size N / (4 max_c sum_i (f_i . t_c)^2)
every `baseline.lpp_alpha_every` epochs, along the gradient summed since the start (the official
code never clears it; `baseline.lpp_alpha_grad`). The official code scores the test set at the
epoch whose validation accuracy is best (the last of equal ones); here that epoch is chosen on the
dev-split tasks (`baseline.lpp_select_epoch`), the test set never seen.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.catalogue import Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, EmbeddingScorer, embed_task, one_hot
from mamf.system.errors import MamfError


def lpp_init(task: Embedded) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(W0, alpha0 [n], lr_w, lr_alpha): the official initialisation and step sizes."""
    labels = one_hot(task.support_labels, task.ways)
    count = len(task.support)
    weight = labels.T @ task.support  # class sums, as the official code (not means)
    text_logits = task.support @ task.texts.T
    counts = labels.sum(0)
    own = (labels * text_logits).sum(0) / counts.clamp(min=1)  # each class's images, own prompt
    alpha = torch.full((task.ways,), 250.0 * float(own[counts > 0].mean()),
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


def lpp_bias(task: Embedded, rng: np.random.Generator) -> torch.Tensor:
    """b0: torch's default for a linear layer's bias, uniform in +-1/sqrt(D), from `rng`."""
    bound = 1 / np.sqrt(task.texts.shape[1])
    return torch.as_tensor(rng.uniform(-bound, bound, task.ways), dtype=torch.float32,
                           device=task.texts.device)


def lpp_logits(task: Embedded, features: torch.Tensor, weight, bias, alpha) -> torch.Tensor:
    return features @ weight.T + bias + alpha * (features @ task.texts.T)


def fit_lpp(task: Embedded, epochs: int, alpha_every: int, rng: np.random.Generator,
            accumulate: bool = True, watch: tuple[torch.Tensor, torch.Tensor] | None = None):
    """((W, b, alpha), accuracies): the parameters after `epochs` full-batch epochs on the
    support set, and with `watch` = (features, labels) the accuracy on them after each epoch.
    With no support image (base-to-novel's novel classes) there is nothing to probe and no
    data-driven step: W = 0, b = 0, alpha = 1, which is the zero-shot classifier."""
    if len(task.support) == 0:
        dim = task.texts.shape[1]
        zeros = torch.zeros(task.ways, dim, device=task.texts.device)
        return (zeros, torch.zeros(task.ways, device=zeros.device),
                torch.ones(task.ways, device=zeros.device)), []
    weight0, alpha0, lr_w, lr_alpha = lpp_init(task)
    weight = weight0.clone().requires_grad_(True)
    bias = lpp_bias(task, rng).requires_grad_(True)
    alpha = alpha0.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([weight, bias], lr=lr_w, momentum=0.9)
    accuracies = []
    with torch.enable_grad():
        for epoch in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            if not accumulate:
                alpha.grad = None
            logits = lpp_logits(task, task.support, weight, bias, alpha)
            F.cross_entropy(logits, task.support_labels).backward()
            optimizer.step()
            if (epoch + 1) % alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
            if watch is not None:
                with torch.no_grad():
                    given = lpp_logits(task, watch[0], weight, bias, alpha).argmax(1)
                    accuracies.append(float((given == watch[1]).float().mean()))
    return (weight.detach(), bias.detach(), alpha.detach()), accuracies


@register
class LPPlusPlus(TestTimeMethod):
    name = "lp++"
    only_when_named = True
    tunes_on_dev = True
    settings = (
        Setting("baseline.lpp_epochs", int, 300, "full-batch epochs", minimum=0),
        Setting("baseline.lpp_alpha_every", int, 10, "epochs between steps of the blend's "
                "weights", minimum=0, above=True),
        Setting("baseline.lpp_alpha_grad", str, "accumulated", "the gradient each blend step "
                "takes: accumulated (summed since the start, as the official code, which never "
                "clears it) or current (this epoch's only)", choices=("accumulated", "current")),
        Setting("baseline.lpp_select_epoch", bool, True, "score at the epoch whose dev-task "
                "accuracy is best (the official code's choice on validation); false: after the "
                "last epoch"),
    )

    def __init__(self, config):
        super().__init__(config)
        self.epochs = config.baseline.lpp_epochs

    def fit(self, task: Embedded, epochs: int, watch=None):
        b = self.config.baseline
        rng = np.random.default_rng([self.config.seed, 151, task.ways])  # the bias's draw
        return fit_lpp(task, epochs, b.lpp_alpha_every, rng,
                       b.lpp_alpha_grad == "accumulated", watch)

    def tune(self, model, inputs, dev_tasks) -> dict:
        b = self.config.baseline
        if not b.lpp_select_epoch or b.lpp_epochs == 0:
            return {}
        totals, used = np.zeros(b.lpp_epochs), 0
        for dev_task in dev_tasks:
            task = embed_task(model, inputs, dev_task)
            if len(task.support) == 0 or len(task.query) == 0:
                continue
            _, accuracies = self.fit(task, b.lpp_epochs, (task.query, task.query_labels))
            totals += accuracies
            used += 1
        if used:
            # the last of equal maxima, as the official `>=` keeps the later epoch
            self.epochs = int(len(totals) - np.argmax(totals[::-1]))
        return {"epochs": self.epochs, "dev_tasks": used,
                "dev_acc": round(float(totals[self.epochs - 1]) / max(1, used), 6)}

    def adapt(self, model, inputs, task, rng) -> EmbeddingScorer:
        embedded = embed_task(model, inputs, task)
        params, _ = self.fit(embedded, self.epochs)
        return EmbeddingScorer(embedded, lambda f: lpp_logits(embedded, f, *params),
                               params=params)
