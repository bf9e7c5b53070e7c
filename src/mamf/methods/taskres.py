"""TaskRes (Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023): a learned
residual added to the frozen text classifier (docs/method.md, "TaskRes").

    logits = s * f @ normalise(T + a * R).T,   R initialised to zero, a = `baseline.taskres_scale`

R is fit by full-batch Adam on the support set's cross-entropy with cosine decay
(`baseline.taskres_lr`, `.taskres_epochs`); before any step the method is zero-shot. The paper
fixes a and the rate per dataset and reports no validation search; neither is searched here.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.methods.base import Method, register
from mamf.methods.embedded import Embedded, embed_task, predicted
from mamf.settings import MAX_RATE, Setting


def taskres_classifier(task: Embedded, residual: torch.Tensor, scale: float) -> torch.Tensor:
    return F.normalize(task.texts + scale * residual, dim=-1)


def fit_residual(task: Embedded, epochs: int, lr: float, scale: float) -> torch.Tensor:
    residual = torch.zeros_like(task.texts, requires_grad=True)
    if epochs == 0 or lr == 0 or len(task.support) == 0:
        return residual.detach()
    optimizer = torch.optim.Adam([residual], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad(set_to_none=True)
            logits = task.scale * task.support @ taskres_classifier(task, residual, scale).T
            F.cross_entropy(logits, task.support_labels).backward()
            optimizer.step()
            schedule.step()
    return residual.detach()


@register
class TaskRes(Method):
    name = "taskres"
    adapt_rate, adapt_epochs = "baseline.taskres_lr", "baseline.taskres_epochs"
    label = "TaskRes"
    summary = "a learned residual on the prompts' text classifier (baseline)"
    colour = "#843c39"
    order = 18
    trains = False
    baseline = True
    settings = (
        Setting("baseline.taskres_epochs", int, 200, "Adam epochs on the residual, cosine decay "
                "(no validation)", minimum=0),
        Setting("baseline.taskres_lr", float, 2e-3, "the residual's Adam rate", minimum=0,
                maximum=MAX_RATE),
        Setting("baseline.taskres_scale", float, 0.5, "the residual's scale a"),
    )

    def adapt(self, model, inputs, task, rng) -> None:
        b = self.config.baseline
        self.task = embed_task(model, inputs, task)
        self.residual = fit_residual(self.task, b.taskres_epochs, b.taskres_lr, b.taskres_scale)

    def predict(self, model, inputs, task) -> np.ndarray:
        b = self.config.baseline
        logits = self.task.scale * self.task.query @ taskres_classifier(
            self.task, self.residual, b.taskres_scale).T
        return predicted(logits)
