"""Data-parallel training under torchrun: every rank takes its share of each global batch, and
DDP (or FSDP) all-reduces the gradients, so P ranks take the steps one process would take.

`train.batch_size` is the global batch: the seeded batch stream is the same on every rank and
each rank computes rows start..start+share of it. The per-rank losses are weighted by their share,
so the gradient equals the whole batch's, whatever the rank count or an uneven split. A run's
steps, and its weights up to floating-point rounding, are the same on 1 or P processes.
"""

from __future__ import annotations

import inspect
import logging
from copy import deepcopy

import torch

from mamf.features.inputs import ModelInputs
from mamf.methods.finetune import Batch, Observer, batch_loss, check_finite
from mamf.models.base import DualEncoder
from mamf.models.loss import restrict_to_batch
from mamf.parallel import distributed

log = logging.getLogger(__name__)


class BatchLoss(torch.nn.Module):
    """The loss as a module: DDP and FSDP synchronise what runs through a wrapped forward."""

    def __init__(self, model: DualEncoder):
        super().__init__()
        self.model = model

    def forward(self, inputs: ModelInputs, batch: Batch, augment: bool,
                within: tuple[int, int], observe: Observer | None = None) -> torch.Tensor:
        return batch_loss(self.model, inputs, batch, "task", augment, within, observe)


class DataParallel:
    """Wraps a model for data-parallel steps; `strategy` is "ddp" or "fsdp".

    Build the optimiser over `params`. Under FSDP training runs on a sharded copy: `sync` (also
    before each checkpoint) copies the whole trained weights back into the model, and `close`
    returns the model to its device.
    """

    def __init__(self, model: DualEncoder, strategy: str = "ddp"):
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.model, self.device = model, model_device(model)
        self.sharded = None  # mamf.parallel.sharded under FSDP (imported only then: it is slow to import)
        self.replicated: list[torch.nn.Parameter] = []
        if strategy == "fsdp":
            from mamf.parallel import sharded

            self.sharded = sharded
            if self.device.type == "cuda":
                model.to("cpu")  # the device holds shards only while training
            # copied on the host; FSDP moves each block to the device as it shards it
            self.module = BatchLoss(deepcopy(model))
            sharded.shard(self.module, sharded.mesh(self.device))
            self.module.to(self.device)  # what stayed whole (0-d parameters, loose buffers)
            self.replicated = sharded.replicated(self.module)
            if distributed.is_main():
                log.info("fsdp: %s", sharded.describe(self.module))
        else:
            from torch.nn.parallel import DistributedDataParallel

            # models stay in eval mode, so buffers never change: no per-step buffer broadcast
            quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                     inspect.signature(DistributedDataParallel).parameters
                     else {"broadcast_buffers": False})
            cuda = self.device.type == "cuda"
            self.module = DistributedDataParallel(
                BatchLoss(model), device_ids=[self.device] if cuda else None, **quiet)
        self.params = [p for p in self.module.parameters() if p.requires_grad]

    def sync(self) -> None:
        """Under FSDP, gather the whole trained weights into the model (every rank calls it)."""
        if self.sharded:
            self.sharded.copy_into(self.model, self.module.model)

    def close(self) -> None:
        self.model.to(self.device)

    def full_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimiser state as one process holds it, keyed by trainable-parameter index."""
        if self.sharded:
            return self.sharded.full_optimizer_state(optimizer)
        return optimizer.state_dict()

    def load_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if self.sharded:
            state = self.sharded.shard_optimizer_state(state, self.params)
        optimizer.load_state_dict(state)

    def backward(self, inputs: ModelInputs, batch: Batch, candidates: str, augment: bool,
                 observe: Observer | None = None, weight: float = 1.0) -> float:
        """This rank's share of the batch's loss, backward (gradients all-reduced); returns the
        whole batch's loss. `observe` sees this rank's rows only (the caller sums over ranks);
        `weight` scales the gradient (one of several tasks in a step)."""
        if candidates == "batch":  # restricted on the whole batch, as one process would
            classes, labels = restrict_to_batch(batch.classes, batch.labels)
            batch = Batch(batch.images, labels, classes, batch.new_task)
        total = len(batch.images)
        start, count = distributed.share(total, self.rank, self.world)
        # a rank with no rows runs one row with weight 0: every rank must join the all-reduce
        rows = slice(start, start + count) if count else slice(0, 1)
        part = Batch(batch.images[rows], batch.labels[rows], batch.classes)
        loss = self.module(inputs, part, augment, (rows.start, total), observe if count else None)
        # DDP averages the ranks' gradients; weighting by share * world makes that the batch mean
        scale = count / total * self.world
        (loss * (scale * weight if weight != 1 else scale)).backward()
        if self.replicated:  # what FSDP left whole is averaged as DDP would
            self.sharded.average_gradients(self.replicated)
        return check_finite(distributed.sum_scalar(float(loss.detach()) * count / total))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
