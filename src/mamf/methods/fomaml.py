"""First-order MAML, exact (docs/method.md, "FOMAML"): per task, adapt a copy on the support set
with SGD, then apply the query-set gradient taken at the adapted weights to the original weights
with the outer optimiser.

The official code reused one stale adapted copy across several outer steps; here every task is
adapted afresh from the current weights. Under `train.budget: matched` the outer updates are
classical fine-tuning's, and meta-batch i holds as many images (support and query) as classical's
minibatch i: tasks are drawn until it is full, the last one cut down to what is left
(docs/method.md, "Budgets").
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch

from mamf import protocols
from mamf.catalogue import MAX_RATE, Setting
from mamf.features.inputs import ModelInputs
from mamf.methods.base import (
    ModelScorer,
    TestTimeMethod,
    TrainedMethod,
    make_optimizer,
    register,
)
from mamf.methods.batched import FineTuning
from mamf.methods.budget import Budget, matched
from mamf.methods.finetune import Batch, Observer, batch_loss, epoch_batches, run_batches, trainable
from mamf.models.base import DualEncoder
from mamf.parallel import distributed
from mamf.system.errors import Diverged
from mamf.tasks.samplers import Confusion, sum_over_ranks
from mamf.tasks.task import Task, check_ways

log = logging.getLogger(__name__)


def clone_learner(model: DualEncoder) -> DualEncoder:
    """A second copy of the model, reused for every task's fast weights (allocated once)."""
    return copy.deepcopy(model)


@torch.no_grad()
def copy_weights(dst: list[torch.nn.Parameter], src: list[torch.nn.Parameter]) -> None:
    """Copy what training can change: the trainable parameters, as `trainable` lists them in
    both copies. Frozen ones and buffers (eval mode) are equal in both from the start and stay so."""
    for d, s in zip(dst, src):
        d.copy_(s)


def adapt_sgd(model: DualEncoder, inputs: ModelInputs, task: Task, lr: float, epochs: int,
              batch_size: int, rng: np.random.Generator, augment: bool = False,
              params: list[torch.nn.Parameter] | None = None) -> list[float]:
    """The inner loop: plain SGD passes over the task's support set (also FOMAML's meta-test).
    `params`: the model's trainable parameters, if the caller has them (walking a large model's
    modules for them costs more than a small head's step)."""
    if epochs == 0 or lr == 0:
        return []
    if augment:
        inputs.reseed(rng)
    sgd = torch.optim.SGD(trainable(model) if params is None else params, lr=lr)
    batches = epoch_batches(rng, task.support, task.support_labels, task.classes, batch_size,
                            epochs)
    return run_batches(model, inputs, batches, sgd, augment=augment)


def query_gradient(model: DualEncoder, inputs: ModelInputs, task: Task, batch_size: int,
                   weight: float, observe: Observer | None = None) -> float:
    """Accumulate weight * d(query loss)/d(weights) into `.grad`; the query set is chunked;
    `observe` sees every chunk's logits."""
    total = len(task.query)
    value = 0.0
    for start in range(0, total, batch_size):
        sl = slice(start, start + batch_size)
        chunk = Batch(task.query[sl], task.query_labels[sl], task.classes)
        loss = batch_loss(model, inputs, chunk, observe=observe)
        share = len(chunk.images) / total
        (loss * share * weight).backward()
        value += float(loss.detach()) * share
    return value


def outer_step(model: DualEncoder, learner: DualEncoder, inputs: ModelInputs, tasks: list[Task],
               outer: torch.optim.Optimizer, inner_lr: float, inner_epochs: int,
               inner_batch_size: int, rngs: list[np.random.Generator],
               augment: bool = False, confusions: list[Confusion] | None = None,
               walked: tuple[list, list] | None = None) -> float:
    """One meta-update over a meta-batch of tasks; returns the mean query loss after adaptation.

    Task k adapts with `rngs[k]`. Under torchrun rank r adapts tasks r, r+P, ... and the outer
    gradients are summed over the ranks, so the update is the one a single process makes.
    `confusions[k]`, if given, records task k's query logits after adaptation; the ranks'
    records are summed as the gradients are. `walked`: (trainable(model), trainable(learner)),
    if the caller keeps them.
    """
    outer.zero_grad(set_to_none=True)
    params, fast = walked or (trainable(model), trainable(learner))
    loss = 0.0
    for k in range(distributed.rank(), len(tasks), distributed.world_size()):
        task = tasks[k]
        copy_weights(fast, params)
        adapt_sgd(learner, inputs, task, inner_lr, inner_epochs, inner_batch_size, rngs[k],
                  augment, fast)
        for q in fast:  # frozen parameters never hold a gradient
            q.grad = None
        weight = 1.0 / len(tasks)
        observe = confusions[k] if confusions else None
        loss += query_gradient(learner, inputs, task, inner_batch_size, weight, observe) * weight
        for p, q in zip(params, fast):
            if q.grad is None:
                continue
            p.grad = q.grad.detach().clone() if p.grad is None else p.grad + q.grad
    distributed.sum_gradients(params)
    if confusions:
        sum_over_ranks(confusions)
    loss = distributed.sum_scalar(loss)
    if not np.isfinite(loss):
        raise Diverged(f"the FOMAML query loss became {loss}: lower the learning rates")
    outer.step()
    return loss


def task_size(task: Task) -> int:
    return len(task.support) + len(task.query)


def trim_task(rng: np.random.Generator, task: Task, images: int) -> Task:
    """The task cut down to about `images` images, spread evenly over its classes, each class
    keeping at least one support and one query image (so a task of n classes keeps >= 2n)."""
    support, query = [], []
    for j in range(task.ways):
        share = max(2, images // task.ways + (j < images % task.ways))
        s_imgs, q_imgs = task.support[task.support_labels == j], task.query[task.query_labels == j]
        s = min(len(s_imgs), (share + 1) // 2)
        q = min(len(q_imgs), share - s)
        support.append(np.sort(rng.choice(s_imgs, size=s, replace=False)))
        query.append(np.sort(rng.choice(q_imgs, size=q, replace=False)))
    labels = [np.full(len(x), j, dtype=task.support_labels.dtype) for j, x in enumerate(support)]
    query_labels = [np.full(len(x), j, dtype=task.query_labels.dtype) for j, x in enumerate(query)]
    return Task(task.classes, np.concatenate(support), np.concatenate(labels),
                np.concatenate(query), np.concatenate(query_labels))


@register
class FOMAML(TrainedMethod, TestTimeMethod):
    name = "fomaml"
    trains_per_ways = True
    draws_tasks = True
    data_parallel = False  # under torchrun the ranks split each meta-batch of tasks instead
    settings = (
        Setting("train.inner_lr", float, 1e-7, "the inner loop's SGD rate", minimum=0,
                maximum=MAX_RATE),
        Setting("train.inner_epochs", int, 1, "the inner loop's passes over a task's support set",
                minimum=0, above=True),
        Setting("train.meta_batch", int, 1, "tasks per outer step", minimum=0, above=True),
        Setting("train.inner_batch_size", int, 8, "the inner loop's batch size", minimum=0,
                above=True),
        # a test task is adapted to as the inner loop does: plain SGD
        Setting("metatest.inner_lr", float, 1e-7, "the test-time inner loop's SGD rate",
                minimum=0, maximum=MAX_RATE),
        Setting("metatest.inner_epochs", int, 1, "the test-time inner loop's passes", minimum=0),
        Setting("metatest.inner_batch_size", int, 8, "the test-time inner loop's batch size",
                minimum=0, above=True),
    )

    def begin(self, model, inputs, pool, rng, sampler, parallel=None) -> None:
        t, d = self.config.train, self.config.data
        check_ways(len(pool.classes), d.ways, "training classes", least=1)
        if t.meta_batch < distributed.world_size() and distributed.is_main():
            log.warning("fomaml: meta_batch=%d tasks per step on %d processes leaves %d of them "
                        "idle; raise train.meta_batch to use them all", t.meta_batch,
                        distributed.world_size(), distributed.world_size() - t.meta_batch)
        self.model, self.inputs, self.pool, self.rng, self.sampler = model, inputs, pool, rng, sampler
        # 1. data: meta-batches of tasks in the protocol's shape, classes from the sampler;
        # as many tasks as `epochs` passes over the pool's images would fill
        n_images = sum(len(x) for x in pool.images)
        self.protocol = protocols.get(d.protocol)
        per_task = self.protocol.task_images(d, pool, d.ways)
        self.budget = Budget(pool, t) if matched(t) else None
        self.owed = 0  # matched: images the updates so far fell short of the budget by
        if self.budget is None:
            n_tasks = math.ceil(t.epochs * n_images / max(1.0, per_task))
            self.steps = t.steps or math.ceil(n_tasks / t.meta_batch)
            sampler.set_total_draws(self.steps * t.meta_batch)
        else:
            self.steps = self.budget.steps
            sampler.set_total_draws(self.budget.draws(per_task))
        self.learner = clone_learner(model)
        self.walked = (trainable(model), trainable(self.learner))  # once a run, not once a step
        self.optimizer = make_optimizer(self.walked[0], t.lr, t.weight_decay)

    def step(self, i: int) -> float:
        # 2. update: adapt a copy to each task's support set (inner SGD), take the query loss's
        # gradient at the adapted weights, apply the meta-batch's mean with the outer Adam; a
        # sampler that learns then sees each task's query confusion, in task order
        t, d = self.config.train, self.config.data
        chosen, tasks = [], []
        # matched: this update's images and what earlier ones fell short (or over) by
        left = self.budget.size(i) + self.owed if self.budget else None
        while self._more(tasks, left):  # each task's classes, then its images
            chosen.append(self.sampler.draw(self.rng, d.ways))
            tasks.append(self.protocol.task(self.rng, self.pool, d, d.ways, chosen[-1]))
            if left is not None:
                if task_size(tasks[-1]) > left:
                    tasks[-1] = trim_task(self.rng, tasks[-1], left)
                left -= task_size(tasks[-1])
        if left is not None:
            self.owed = left
        self.images += sum(task_size(task) for task in tasks)
        task_rngs = [np.random.default_rng([self.config.seed, 12, d.ways, i, k])
                     for k in range(len(tasks))]
        confusions = ([self.sampler.recorder(task.classes) for task in tasks]
                      if self.sampler.learns else None)
        loss = outer_step(self.model, self.learner, self.inputs, tasks, self.optimizer,
                          t.inner_lr, t.inner_epochs, t.inner_batch_size, task_rngs, t.augment,
                          confusions, self.walked)
        for c, confusion in zip(chosen, confusions or []):
            self.sampler.observe(c, confusion.values())
        return loss

    def _more(self, tasks: list[Task], left: int | None) -> bool:
        """Whether the meta-batch takes another task: `meta_batch` of them (native), or while
        images are left and a smallest task (one support and one query image a class) comes
        nearer the budget than stopping; every update has at least one task."""
        if left is None:
            return len(tasks) < self.config.train.meta_batch
        smallest = 2 * self.config.data.ways
        return not tasks or left > 0 and smallest - left < left

    def chance_classes(self, pool) -> int | None:
        return self.config.data.ways  # the query loss over the task's n classes

    def chance_hint(self) -> str:
        return (f"its loss is the query loss after SGD at train.inner_lr="
                f"{self.config.train.inner_lr:g} on each task's support set")

    def stream_state(self) -> dict:
        state = {"rng": self.rng.bit_generator.state, "sampler": self.sampler.state_dict()}
        return {**state, "owed": self.owed} if self.budget else state

    def load_stream_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sampler.load_state_dict(state["sampler"])
        self.owed = int(state.get("owed", 0))

    def fine_tuning(self) -> FineTuning | None:
        m = self.config.metatest
        return FineTuning("sgd", m.inner_lr, m.inner_epochs, m.inner_batch_size)

    def adapt(self, model, inputs, task, rng) -> ModelScorer:
        # 3. test time: the inner loop's plain SGD on the support set, with its own settings
        m = self.config.metatest
        adapt_sgd(model, inputs, task, m.inner_lr, m.inner_epochs, m.inner_batch_size, rng,
                  m.augment, self.trainable(model))
        return ModelScorer(model, inputs, task)
