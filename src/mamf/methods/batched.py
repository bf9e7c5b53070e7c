"""The batched meta-test (`metatest.batched`): many test tasks adapted at once where what a task
adapts is small, each task getting exactly the updates the one-task-at-a-time meta-test gives it.

With both towers frozen and cached (the demo's case, and most baselines' base), a test task's
fine-tuning changes only the image head and the temperature: a few hundred thousand values. One
task at a time, each of its few optimiser steps is a handful of tiny kernels behind Python,
copying weights back and building an optimiser, so the machine mostly waits. Here the trainable
parameters are stacked, one copy per task, and each step of every task in a chunk is one call:
`torch.func.vmap` over `grad` of the task's loss through `torch.func.functional_call`, then the
optimiser's update on the stacked tensors, written out as torch's own Adam (or SGD) computes it,
element by element.

Each task draws its batches from its own seeded stream, as before; tasks whose streams give the
same batch sizes (and the same number of classes and query images) share a chunk. The model is
never changed (the stacked copies are updated, not its parameters), so nothing is restored
between tasks. Batched matrix products may round differently from one task's products, so an
accuracy can differ by a query image: `bench/metatest.py --batched` counts how many do; studies
whose rows must reproduce keep the default, one task at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from mamf.features.inputs import ModelInputs, autocast
from mamf.methods.finetune import Batch, epoch_batches
from mamf.methods.scorer import Predicted
from mamf.models.base import DualEncoder
from mamf.models.loss import task_logits
from mamf.system.device import host_to_device
from mamf.tasks.task import Task

# stacked parameters, gradients and optimiser moments a chunk holds: a chunk that stays in a CPU's
# cache (about 5 tasks of a 384,000-value head) ran the demo's 300 emoji tasks in 3.9 s on one
# thread, against 7.7 s at 2**26 (43 tasks a chunk)
FLOATS_A_CHUNK = 2**23
# tasks of one shape worth batching: the paper protocol's few tasks a size (95 over n = 2..9 on
# the demo's counting) ran 2.2x slower batched on 2 CPU cores, the episodic 600 5.1x faster
FEWEST = 64


@dataclass(frozen=True)
class FineTuning:
    """How a method fine-tunes at test time: `optimizer` "adam" or "sgd" (torch's defaults
    otherwise) at `lr`, `epochs` passes over the support set in batches of `batch_size`."""

    optimizer: str
    lr: float
    epochs: int
    batch_size: int


def applies(inputs: ModelInputs, tuning: FineTuning | None, augment: bool, reset: bool) -> bool:
    """Whether the batched meta-test gives the same updates: both towers' outputs cached (a
    step reads no pixels and no prompts), no augmentation, every task from the trained weights."""
    return (tuning is not None and reset and not augment and inputs.features is not None
            and not inputs.image_top_blocks and inputs.text_cache is not None)


class _Loss(torch.nn.Module):
    """One task's loss on one batch, as `finetune.batch_loss` computes it with cached towers."""

    def __init__(self, model: DualEncoder, inputs: ModelInputs):
        super().__init__()
        self.model = model
        self.device, self.precision = inputs.device, inputs.precision

    def forward(self, features: torch.Tensor, texts: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            image_emb = self.model.image_head(features)
        return self.model.task_loss(self.model.task_logits(image_emb, texts), labels)


class _Logits(torch.nn.Module):
    """One task's query logits, as `methods.base.predict` computes them."""

    def __init__(self, model: DualEncoder, inputs: ModelInputs):
        super().__init__()
        self.model = model
        self.device, self.precision = inputs.device, inputs.precision

    def forward(self, features: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return task_logits(self.model.logit_scale(), self.model.image_head(features), texts)


def _chunks(model: DualEncoder, inputs: ModelInputs, tasks: dict[int, Task],
            rngs: dict[int, np.random.Generator], tuning: FineTuning,
            least: int = 1) -> Iterator[tuple]:
    """(task keys, their stacked parameters by name [tasks, ...]), chunk by chunk of tasks of
    one shape fine-tuned together; shapes shared by fewer than `least` tasks are left out."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    plans = {i: list(epoch_batches(rngs[i], t.support, t.support_labels, t.classes,
                                   tuning.batch_size, tuning.epochs)) for i, t in tasks.items()}
    groups: dict[tuple, list[int]] = {}
    for i, task in tasks.items():
        shape = (task.ways, len(task.query), tuple(len(b.images) for b in plans[i]))
        groups.setdefault(shape, []).append(i)
    size = sum(p.numel() for _, p in named)
    per_chunk = max(1, FLOATS_A_CHUNK // (4 * max(1, size)))
    for members in groups.values():
        if len(members) < least:
            continue  # too few to gain: one at a time
        for start in range(0, len(members), per_chunk):
            chunk = members[start : start + per_chunk]
            texts = _texts(model, inputs, [tasks[i] for i in chunk])
            yield chunk, texts, _fine_tuned(model, inputs, named, [plans[i] for i in chunk],
                                            texts, tuning)


def adapted(model: DualEncoder, inputs: ModelInputs, tasks: dict[int, Task],
            rngs: dict[int, np.random.Generator], tuning: FineTuning) -> dict[int, dict]:
    """Each task's trainable parameters (by name) after its fine-tuning, keyed as `tasks`."""
    return {i: {n: p[k] for n, p in params.items()}
            for chunk, _, params in _chunks(model, inputs, tasks, rngs, tuning)
            for k, i in enumerate(chunk)}


def scorers(model: DualEncoder, inputs: ModelInputs, tasks: dict[int, Task],
            rngs: dict[int, np.random.Generator], tuning: FineTuning) -> dict[int, Predicted]:
    """Each task's scorer after its fine-tuning (what `adapt` returns one at a time), keyed as
    `tasks`, of the tasks whose shape FEWEST tasks or more share (the others are left to the
    one-at-a-time loop: a batched step costs more than a small task's step, so a few tasks gain
    nothing). A chunk's queries are classified together as it is adapted, and its parameters let
    go once they are: each scorer holds its task's classes."""
    logits = _Logits(model, inputs)

    def task_logits_of(weights: dict, features, texts):
        return functional_call(logits, {f"model.{n}": w for n, w in weights.items()},
                               (features, texts))

    out = {}
    with torch.no_grad():
        for chunk, texts, params in _chunks(model, inputs, tasks, rngs, tuning, FEWEST):
            features = _features(inputs, [tasks[i].query for i in chunk])
            given = vmap(task_logits_of)(params, features, texts).argmax(-1).cpu().numpy()
            out.update((i, Predicted(classes)) for i, classes in zip(chunk, given))
    return out


def _features(inputs: ModelInputs, images: list[np.ndarray]) -> torch.Tensor:
    """The cached backbone outputs of each task's images, [tasks, images, ...], in one read."""
    flat = inputs.frozen_features(np.concatenate(images))
    return flat.view(len(images), len(images[0]), *flat.shape[1:])


def _texts(model: DualEncoder, inputs: ModelInputs, tasks: list[Task]) -> torch.Tensor:
    """The cached class embeddings of each task's classes, [tasks, ways, dim]."""
    with torch.no_grad():
        flat = inputs.texts(model, np.concatenate([t.classes for t in tasks]))
    return flat.view(len(tasks), tasks[0].ways, -1)


def _fine_tuned(model: DualEncoder, inputs: ModelInputs, named: list, plans: list[list[Batch]],
                texts: torch.Tensor, tuning: FineTuning) -> dict[str, torch.Tensor]:
    """The stacked parameters [tasks, ...] after each task's batches (`plans`, one list a task,
    of equal sizes step by step; `texts`: each task's class embeddings)."""
    loss = _Loss(model, inputs)
    count = len(plans)
    params = {n: p.detach().unsqueeze(0).repeat(count, *([1] * p.dim())) for n, p in named}
    moments = {n: (torch.zeros_like(v), torch.zeros_like(v)) for n, v in params.items()}

    def task_loss(weights: dict, features, texts, labels):
        return functional_call(loss, {f"model.{n}": w for n, w in weights.items()},
                               (features, texts, labels))

    gradients = vmap(grad(task_loss))
    for step in range(len(plans[0])):
        batches = [plan[step] for plan in plans]
        with torch.no_grad():
            features = _features(inputs, [b.images for b in batches])
        labels = host_to_device(np.stack([b.labels for b in batches]).astype(np.int64),
                                features.device)
        grads = gradients(params, features, texts, labels)
        with torch.no_grad():
            for n, value in params.items():
                _update(value, grads[n], moments[n], step + 1, tuning)
    return params


def _update(param: torch.Tensor, gradient: torch.Tensor, moments: tuple, step: int,
            tuning: FineTuning) -> None:
    """torch.optim's update for stacked parameters, as its single-tensor path computes it
    (Adam: betas 0.9 and 0.999, eps 1e-8; SGD: no momentum), element for element."""
    if tuning.optimizer == "sgd":
        param.add_(gradient, alpha=-tuning.lr)
        return
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    exp_avg, exp_avg_sq = moments
    exp_avg.lerp_(gradient, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(gradient, gradient, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = tuning.lr / bias_correction1
    denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)
