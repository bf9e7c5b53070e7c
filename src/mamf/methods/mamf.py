"""MAMF, model-agnostic multitask fine-tuning: classical fine-tuning whose data arrives as n-way
tasks (docs/method.md, "MAMF").

`sampled` (default): every step draws n classes from the task sampler (uniform: the paper's) and a
minibatch of their training images, so the compute equals classical fine-tuning's. `sequential`
reproduces the official code: K(n, N) tasks trained one after another, `epochs` passes each, with a
fresh optimiser per task. Under `train.budget: matched` both take classical fine-tuning's
updates and images per update (`mamf.methods.budget`): a sampled step holding fewer images than that is
filled with further tasks; the sequential schedule shares classical's updates among its K tasks.
"""

from __future__ import annotations

import numpy as np

from mamf.data.dataset import Pool, group_labels
from mamf.methods.base import (
    PastTheEnd,
    TestTimeMethod,
    TrainedMethod,
    make_optimizer,
    register,
)
from mamf.methods.budget import Budget, classical_steps, matched, pool_images
from mamf.methods.finetune import Batch, epoch_batches, sized_batches, step_tasks
from mamf.tasks.samplers import sum_over_ranks
from mamf.tasks.task import check_ways, number_of_tasks


def task_images(pool: Pool, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    groups = [pool.images[c] for c in chosen]
    return np.concatenate(groups), group_labels(groups)


class SampledStream:
    """Each step: n classes from the sampler, then up to `batch_size` of their images. With a
    `budget`, step i holds `budget.size(i)` images: tasks are drawn until it is full."""

    def __init__(self, rng, pool: Pool, sampler, ways: int, batch_size: int,
                 budget: Budget | None = None):
        self.rng, self.pool, self.sampler = rng, pool, sampler
        self.ways, self.batch_size, self.budget = ways, batch_size, budget

    def take(self, i: int) -> list[Batch]:
        if self.budget is None:
            return [self._task(self.batch_size)]
        batches, left = [], self.budget.size(i)
        while left > 0:
            batches.append(self._task(left))
            left -= len(batches[-1].images)
        return batches

    def __next__(self) -> Batch:
        """A native step's batch: one task, up to `batch_size` of its images."""
        return self._task(self.batch_size)

    def _task(self, limit: int) -> Batch:
        chosen = self.sampler.draw(self.rng, self.ways)
        images, labels = task_images(self.pool, chosen)
        pick = self.rng.choice(len(images), size=min(limit, len(images)), replace=False)
        return Batch(images[pick], labels[pick], self.pool.classes[chosen], chosen=chosen)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sampler.load_state_dict(state["sampler"])


class SequentialStream:
    """The official schedule: K(n, N) tasks in turn, `epochs` passes each; `new_task` marks a
    task's first batch. Its state is the current task's classes, the generator as that task's
    passes began, and the batches taken from them."""

    def __init__(self, rng, pool: Pool, sampler, ways: int, batch_size: int, epochs: int,
                 budget: Budget | None = None):
        self.rng, self.pool, self.sampler = rng, pool, sampler
        self.ways, self.batch_size, self.epochs = ways, batch_size, epochs
        self.tasks = number_of_tasks(ways, len(pool.classes))
        self.budget = budget
        if budget is not None:  # classical's updates shared out among the tasks, in turn
            share, extra = divmod(budget.steps, self.tasks)
            counts = [share + (k < extra) for k in range(self.tasks)]
            self.tasks = sum(1 for c in counts if c)
            self.firsts = np.cumsum([0] + counts)  # task k's first update
        self.task, self.taken = -1, 0
        self.chosen: np.ndarray | None = None
        self.batches = iter(())
        self.task_state: dict | None = None

    def _start(self, chosen: np.ndarray, state: dict) -> None:
        self.chosen, self.task_state = chosen, state
        self.rng.bit_generator.state = state
        images, labels = task_images(self.pool, chosen)
        classes = self.pool.classes[chosen]
        if self.budget is None:
            self.batches = epoch_batches(self.rng, images, labels, classes, self.batch_size,
                                         self.epochs)
        else:
            sizes = [self.budget.size(i) for i in range(self.firsts[self.task],
                                                          self.firsts[self.task + 1])]
            self.batches = sized_batches(self.rng, images, labels, classes, sizes)
        self.taken = 0

    def take(self, i: int) -> list[Batch]:
        return [next(self)]

    def __next__(self) -> Batch:
        for b in self.batches:
            self.taken += 1
            return Batch(b.images, b.labels, b.classes, new_task=(self.taken == 1),
                         chosen=self.chosen)
        if self.task + 1 >= self.tasks:
            raise StopIteration
        self.task += 1
        chosen = self.sampler.draw(self.rng, self.ways)
        self._start(chosen, self.rng.bit_generator.state)
        return next(self)

    def state_dict(self) -> dict:
        return {"task": self.task, "taken": self.taken, "task_rng": self.task_state,
                "chosen": None if self.chosen is None else self.chosen.tolist(),
                "rng": self.rng.bit_generator.state, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.task = int(state["task"])
        if state["chosen"] is None:
            self.rng.bit_generator.state = state["rng"]
            return
        if self.task >= self.tasks:
            raise PastTheEnd
        self._start(np.asarray(state["chosen"], dtype=np.int64), state["task_rng"])
        for _ in range(int(state["taken"])):
            if next(self.batches, None) is None:
                raise PastTheEnd
        self.taken = int(state["taken"])


@register
class MAMF(TrainedMethod, TestTimeMethod):
    name = "mamf"
    trains_per_ways = True
    draws_tasks = True

    def begin(self, model, inputs, pool, rng, sampler, parallel=None) -> None:
        t, d = self.config.train, self.config.data
        check_ways(len(pool.classes), d.ways, "training classes", least=1)
        self.model, self.inputs, self.parallel = model, inputs, parallel
        # 1. data: a task per step (or the official K tasks in turn), its images in minibatches
        budget = Budget(pool, t) if matched(t) else None
        if t.schedule == "sampled":
            self.stream = SampledStream(rng, pool, sampler, d.ways, t.batch_size, budget)
            self.steps = classical_steps(pool, t)
            per_task = pool_images(pool) * d.ways / len(pool.classes)
            sampler.set_total_draws(budget.draws(per_task) if budget else self.steps)
        else:
            self.stream = SequentialStream(rng, pool, sampler, d.ways, t.batch_size,
                                           max(1, round(t.epochs)), budget)
            self.steps = budget.steps if budget else None
            sampler.set_total_draws(self.stream.tasks)
        self.sampler = sampler
        self.optimizer = make_optimizer(self.params(model), t.lr, t.weight_decay)

    def step(self, i: int) -> float | None:
        # 2. update: one Adam step on the task minibatch's loss over the task's n classes;
        # the sequential schedule starts every task with a fresh optimiser; a sampler that
        # learns sees the step's confusion among the task's classes (summed over the ranks)
        t = self.config.train
        try:
            batches = self.stream.take(i)
        except StopIteration:
            return None
        if batches[0].new_task and i > 0:
            self.optimizer = make_optimizer(self.params(self.model), t.lr, t.weight_decay)
        confusions = [self.sampler.recorder(b.classes) for b in batches]
        loss = step_tasks(self.model, self.inputs, batches, self.optimizer, t.candidates,
                          t.augment, self.parallel, confusions)
        for batch, confusion in zip(batches, confusions):
            if confusion is not None:
                sum_over_ranks([confusion])
                self.sampler.observe(batch.chosen, confusion.values())
        self.images += sum(len(b.images) for b in batches)
        return loss

    def chance_classes(self, pool) -> int | None:
        # the task's n classes, unless the loss is over the batch's classes only
        return self.config.data.ways if self.config.train.candidates == "task" else None

    def stream_state(self) -> dict:
        return self.stream.state_dict()

    def load_stream_state(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    # 3. test time: Adam on the support set (TestTimeMethod.adapt)
