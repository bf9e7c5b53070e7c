"""First-order MAML, exact: per task, adapt a copy on the support set with SGD, then apply the
query-set gradient taken at the adapted weights to the original weights with the outer optimiser.

The official code reused one stale adapted copy across several outer steps; here every task is
adapted afresh from the current weights (SPEC.md section 5).
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from mamf import distributed
from mamf.errors import MamfError
from mamf.finetune import Batch, batch_loss, epoch_batches, run_batches, trainable
from mamf.inputs import ModelInputs
from mamf.models.base import DualEncoder
from mamf.tasks import Task


def clone_learner(model: DualEncoder) -> DualEncoder:
    """A second copy of the model, reused for every task's fast weights (allocated once)."""
    return copy.deepcopy(model)


@torch.no_grad()
def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Copy what training can change: trainable parameters. Frozen ones and buffers (eval mode)
    are equal in both copies from the start and stay so."""
    for d, s in zip(dst.parameters(), src.parameters()):
        if s.requires_grad:
            d.copy_(s)


def adapt_sgd(model: DualEncoder, inputs: ModelInputs, task: Task, lr: float, epochs: int,
              batch_size: int, rng: np.random.Generator, augment: bool = False) -> list[float]:
    """The inner loop: plain SGD passes over the task's support set (also FOMAML's meta-test)."""
    if epochs == 0 or lr == 0:
        return []
    if augment:
        inputs.reseed(rng)
    sgd = torch.optim.SGD(trainable(model), lr=lr)
    batches = epoch_batches(rng, task.support, task.support_labels, task.classes, batch_size,
                            epochs)
    return run_batches(model, inputs, batches, sgd, augment=augment)


def query_gradient(model: DualEncoder, inputs: ModelInputs, task: Task, batch_size: int,
                   weight: float) -> float:
    """Accumulate weight * d(query loss)/d(weights) into `.grad`; the query set is chunked."""
    total = len(task.query)
    value = 0.0
    for start in range(0, total, batch_size):
        sl = slice(start, start + batch_size)
        chunk = Batch(task.query[sl], task.query_labels[sl], task.classes)
        loss = batch_loss(model, inputs, chunk)
        share = len(chunk.images) / total
        (loss * share * weight).backward()
        value += float(loss.detach()) * share
    return value


def outer_step(model: DualEncoder, learner: DualEncoder, inputs: ModelInputs, tasks: list[Task],
               outer: torch.optim.Optimizer, inner_lr: float, inner_epochs: int,
               inner_batch_size: int, rngs: list[np.random.Generator],
               augment: bool = False) -> float:
    """One meta-update over a meta-batch of tasks; returns the mean query loss after adaptation.

    Task k adapts with `rngs[k]`. Under torchrun rank r adapts tasks r, r+P, ... and the outer
    gradients are summed over the ranks, so the update is the one a single process makes.
    """
    outer.zero_grad(set_to_none=True)
    params, fast = trainable(model), trainable(learner)  # walked once, not once per task
    loss = 0.0
    for k in range(distributed.rank(), len(tasks), distributed.world_size()):
        task = tasks[k]
        copy_weights(learner, model)
        adapt_sgd(learner, inputs, task, inner_lr, inner_epochs, inner_batch_size, rngs[k],
                  augment)
        for q in fast:  # frozen parameters never hold a gradient
            q.grad = None
        weight = 1.0 / len(tasks)
        loss += query_gradient(learner, inputs, task, inner_batch_size, weight) * weight
        for p, q in zip(params, fast):
            if q.grad is None:
                continue
            p.grad = q.grad.detach().clone() if p.grad is None else p.grad + q.grad
    distributed.sum_gradients(params)
    loss = distributed.sum_scalar(loss)
    if not np.isfinite(loss):
        raise MamfError(f"the FOMAML query loss became {loss}: lower the learning rates")
    outer.step()
    return loss
