"""The minibatch fine-tuning step, shared by classical, MAMF, FOMAML's inner loop and the meta-test.

A `Batch` names its images, their labels and the candidate classes the loss ranges over; the
methods differ only in how they produce batches (docs/method.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mamf.features.inputs import ModelInputs, autocast
from mamf.models.base import DualEncoder
from mamf.models.loss import restrict_to_batch
from mamf.system.device import host_to_device
from mamf.system.errors import Diverged

# sees a loss's logits [B, C], labels [B] and the C candidate classes' global ids
Observer = Callable[[torch.Tensor, torch.Tensor, np.ndarray], None]


@dataclass(frozen=True)
class Batch:
    """Image indices, labels as positions in `classes`, and `classes` as global class ids;
    `chosen`: for a task's batch, its classes as positions in the training pool."""

    images: np.ndarray
    labels: np.ndarray
    classes: np.ndarray
    new_task: bool = False
    chosen: np.ndarray | None = None


def batch_loss(model: DualEncoder, inputs: ModelInputs, batch: Batch, candidates: str = "task",
               augment: bool = False, within: tuple[int, int] | None = None,
               observe: Observer | None = None) -> torch.Tensor:
    """Mean loss over the batch; `within` places a rank's share in the whole batch (augmentation).

    `observe(logits, labels, classes)` sees the loss's own logits (a task sampler that learns
    from them, `mamf.tasks.samplers.Confusion`): no extra forward pass."""
    classes, labels = batch.classes, batch.labels
    if candidates == "batch":
        classes, labels = restrict_to_batch(classes, labels)
    with autocast(inputs.device, inputs.precision):
        image_emb = inputs.images(model, batch.images, augment=augment, within=within)
        text_emb = inputs.texts(model, classes)
    target = host_to_device(np.asarray(labels, dtype=np.int64), image_emb.device)
    logits = model.task_logits(image_emb, text_emb)
    if observe is not None:
        observe(logits.detach(), target, classes)
    return model.task_loss(logits, target)


def trainable(model: DualEncoder) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


class StepLoss:
    """A step's loss, left on the device until read: reading it waits for the GPU to finish
    every kernel queued, so the training loop reads its steps' losses together, every few steps
    (`read_losses`). Its batches' mean losses and their weights, summed in Python floats as read
    (the numbers of a loss read at once)."""

    def __init__(self, parts: list[tuple[torch.Tensor, float]]):
        self.parts = parts


Loss = float | StepLoss


def read_losses(losses: list[Loss]) -> list[float]:
    """The values of `losses` (floats as they are), with one read from the device for all;
    NaN/inf stops the run."""
    pending = [t for loss in losses if isinstance(loss, StepLoss) for t, _ in loss.parts]
    values = iter(torch.stack([t.float() for t in pending]).cpu().tolist() if pending else [])
    out = []
    for loss in losses:
        if isinstance(loss, StepLoss):
            value = 0.0
            for _, weight in loss.parts:
                value += check_finite(next(values)) * weight
            loss = value
        out.append(check_finite(loss))
    return out


def step(model: DualEncoder, inputs: ModelInputs, batch: Batch, optimizer: torch.optim.Optimizer,
         candidates: str = "task", augment: bool = False, parallel=None,
         observe: Observer | None = None) -> Loss:
    """One forward, loss, backward and optimiser step. Returns the loss (`read_losses` reads
    it; NaN/inf stops the run).

    With `parallel` (a `mamf.engine.data_parallel.DataParallel`) the batch is the global one: each rank
    computes its share and the gradients are all-reduced before the step. `observe` sees the
    logits of the rows this process computed (`batch_loss`).
    """
    return step_tasks(model, inputs, [batch], optimizer, candidates, augment, parallel,
                      [observe])


def step_tasks(model: DualEncoder, inputs: ModelInputs, batches: list[Batch],
               optimizer: torch.optim.Optimizer, candidates: str = "task",
               augment: bool = False, parallel=None,
               observers: list[Observer | None] | None = None) -> Loss:
    """One optimiser step on several tasks' minibatches at once (a matched budget fills a step
    with tasks, docs/method.md, "Budgets"): each batch's mean loss over its own candidates,
    weighted by its share of the step's images, so the step's loss is the mean over all its
    images. One batch is `step` exactly. Returns the step's loss."""
    optimizer.zero_grad(set_to_none=True)
    total = sum(len(b.images) for b in batches)
    value = 0.0
    parts = []
    for batch, observe in zip(batches, observers or [None] * len(batches)):
        weight = len(batch.images) / total
        if parallel is not None:
            value += parallel.backward(inputs, batch, candidates, augment, observe, weight) \
                * weight
        else:
            loss = batch_loss(model, inputs, batch, candidates, augment, observe=observe)
            parts.append((loss.detach(), weight))
            (loss * weight if weight != 1 else loss).backward()
    optimizer.step()
    return StepLoss(parts) if parallel is None else value


def check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise Diverged(f"the training loss became {value}: lower the learning rate")
    return value


def epoch_batches(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                  classes: np.ndarray, batch_size: int, epochs: int) -> Iterator[Batch]:
    """`epochs` passes over (images, labels) in a fresh random order each pass."""
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch_size):
            pick = order[start : start + batch_size]
            yield Batch(images[pick], labels[pick], classes)


def sized_batches(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                  classes: np.ndarray, sizes: Iterable[int]) -> Iterator[Batch]:
    """Batches of the given sizes from back-to-back random passes over (images, labels): a batch
    may run on into the next pass, so a pool smaller than a batch fills it by cycling."""
    order, at = np.empty(0, dtype=np.int64), 0
    for size in sizes:
        picks = []
        while size > 0:
            if at == len(order):
                order, at = rng.permutation(len(images)), 0
            take = order[at : at + size]
            picks.append(take)
            at += len(take)
            size -= len(take)
        pick = np.concatenate(picks)
        yield Batch(images[pick], labels[pick], classes)


class EpochStream:
    """Minibatches from endless epochs over (images, labels), exactly as `epoch_batches` draws
    them, and resumable: its state is the generator's state at the start of the current epoch
    and how many batches of that epoch were taken."""

    def __init__(self, rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                 classes: np.ndarray, batch_size: int):
        self.rng, self.images, self.labels, self.classes = rng, images, labels, classes
        self.batch_size = batch_size
        self.order: np.ndarray | None = None
        self.epoch_state: dict | None = None
        self.taken = 0

    def __iter__(self) -> EpochStream:
        return self

    def __next__(self) -> Batch:
        if self.order is None or self.taken * self.batch_size >= len(self.order):
            self.epoch_state = self.rng.bit_generator.state
            self.order = self.rng.permutation(len(self.images))
            self.taken = 0
        pick = self.order[self.taken * self.batch_size : (self.taken + 1) * self.batch_size]
        self.taken += 1
        return Batch(self.images[pick], self.labels[pick], self.classes)

    def state_dict(self) -> dict:
        if self.epoch_state is None:
            return {"rng": self.rng.bit_generator.state}
        return {"epoch_rng": self.epoch_state, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        if "epoch_rng" not in state:
            self.rng.bit_generator.state = state["rng"]
            return
        self.rng.bit_generator.state = state["epoch_rng"]
        self.epoch_state = state["epoch_rng"]
        self.order = self.rng.permutation(len(self.images))
        self.taken = int(state["taken"])


def run_batches(model: DualEncoder, inputs: ModelInputs, batches: Iterable[Batch],
                optimizer: torch.optim.Optimizer, candidates: str = "task",
                augment: bool = False) -> list[float]:
    """Steps over `batches`; their losses are read once, after the last."""
    return read_losses([step(model, inputs, b, optimizer, candidates, augment) for b in batches])
