"""Train a model with one of the three trained methods on a dataset's training pool."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from mamf import distributed
from mamf.checkpoint import Checkpointer
from mamf.config import Config
from mamf.data.dataset import ImageDataset, Pool
from mamf.errors import MamfError
from mamf.finetune import step, trainable
from mamf.inputs import ModelInputs
from mamf.methods import classical, fomaml, mamf
from mamf.models.base import DualEncoder
from mamf.parallel import DataParallel
from mamf.progress import bar as progress_bar
from mamf.tasks import Task, episodic_task, paper_task

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    method: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
    if not params:
        raise MamfError("nothing to train: every parameter is frozen")
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def train_pool(dataset: ImageDataset, config: Config) -> Pool:
    d = config.data
    return dataset.pool(d.protocol, "train", d.class_split, d.split_seed)


def fomaml_task(rng: np.random.Generator, pool: Pool, config: Config) -> Task:
    """Training tasks take the same shape as test tasks under the chosen protocol."""
    d = config.data
    if d.protocol == "paper":
        return paper_task(rng, pool, d.ways)
    return episodic_task(rng, pool, d.ways, d.shots, d.queries)


def train(model: DualEncoder, inputs: ModelInputs, dataset: ImageDataset, config: Config,
          progress: bool = True, checkpointer: Checkpointer | None = None) -> TrainResult:
    """Run `config.train.method`; deterministic given `config.seed` on CPU.

    Under torchrun, classical and MAMF train data-parallel (`mamf.parallel`) and FOMAML splits
    each meta-batch of tasks across the ranks; either way the steps are a single process's.

    With a `checkpointer`, state is saved every `checkpointer.every` steps and a run resumes from
    the newest checkpoint, ending with the same weights as an uninterrupted run.
    """
    t, d = config.train, config.data
    pool = train_pool(dataset, config)
    if t.method != "classical" and d.ways > len(pool.classes):
        raise MamfError(f"ways={d.ways} is more than the {len(pool.classes)} training classes")
    rng = np.random.default_rng([config.seed, 11, d.ways])
    n_images = sum(len(x) for x in pool.images)
    resume = checkpointer.restore(model) if checkpointer else None
    start = resume.step if resume else 0
    if distributed.from_main(start) != start:
        raise MamfError(f"rank {distributed.rank()} sees another checkpoint in "
                        f"{checkpointer.folder} than rank 0: every node needs the run folder on "
                        "one shared file system")
    losses: list[float] = list(resume.losses) if resume else []
    if resume:
        inputs.generator.set_state(resume.generator_state)
    started = time.perf_counter()

    parallel = None

    def save(step_count: int, optimizer) -> None:
        # every rank holds the same weights, optimiser state and streams: rank 0 writes them
        # (under FSDP all ranks first gather the whole state)
        if not (checkpointer and checkpointer.due(step_count)):
            return
        state = parallel.full_state(optimizer) if parallel else optimizer.state_dict()
        if parallel:
            parallel.sync()
        if distributed.is_main():
            checkpointer.save(step_count, model, state, rng, inputs.generator, losses)

    if t.method == "fomaml":
        if t.parallel == "fsdp" and distributed.world_size() > 1:
            raise MamfError("train.parallel=fsdp is for classical and mamf: FOMAML splits its "
                            "tasks across ranks, each adapting a whole model copy")
        per_task = (d.ways * d.shots + d.ways * d.queries if d.protocol == "episodic"
                    else n_images * d.ways / len(pool.classes))
        n_tasks = math.ceil(t.epochs * n_images / max(1.0, per_task))
        steps = t.steps or math.ceil(n_tasks / t.meta_batch)
        if t.meta_batch < distributed.world_size() and distributed.is_main():
            log.warning("fomaml: meta_batch=%d tasks per step on %d processes leaves %d of them "
                        "idle; raise train.meta_batch to use them all", t.meta_batch,
                        distributed.world_size(), distributed.world_size() - t.meta_batch)
        learner = fomaml.clone_learner(model)
        outer = make_optimizer(trainable(model), t.lr, t.weight_decay)
        if resume:
            rng.bit_generator.state = resume.rng_state
            outer.load_state_dict(resume.optimizer_state)
        bar = progress_bar(range(start, steps), enabled=progress, desc="fomaml", leave=False)
        for i in bar:
            tasks = [fomaml_task(rng, pool, config) for _ in range(t.meta_batch)]
            task_rngs = [np.random.default_rng([config.seed, 12, d.ways, i, k])
                         for k in range(len(tasks))]
            losses.append(fomaml.outer_step(model, learner, inputs, tasks, outer, t.inner_lr,
                                            t.inner_epochs, t.inner_batch_size, task_rngs,
                                            t.augment))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            save(i + 1, outer)
        del learner
        return TrainResult(t.method, steps, time.perf_counter() - started, losses)

    steps = t.steps or math.ceil(t.epochs * classical.steps_per_epoch(pool, t.batch_size))
    if t.method == "classical":
        batches = classical.batches(rng, pool, t.batch_size, steps)
    elif t.schedule == "sampled":
        batches = mamf.sampled_batches(rng, pool, d.ways, t.batch_size, steps)
    else:
        batches = mamf.sequential_batches(rng, pool, d.ways, t.batch_size,
                                          max(1, round(t.epochs)))
        steps = None
    parallel = DataParallel(model, t.parallel) if distributed.world_size() > 1 else None
    params = parallel.params if parallel else trainable(model)
    optimizer = make_optimizer(params, t.lr, t.weight_decay)
    if resume:
        # replay the batch stream up to the checkpoint: it draws from `rng` exactly as before
        for _ in zip(range(start), batches):
            pass
        if parallel:
            parallel.load_state(optimizer, resume.optimizer_state)
        else:
            optimizer.load_state_dict(resume.optimizer_state)
    bar = progress_bar(batches, enabled=progress, total=None if steps is None else steps - start,
                       desc=t.method, leave=False)
    try:
        for batch in bar:
            if batch.new_task and losses:
                optimizer = make_optimizer(params, t.lr, t.weight_decay)
            losses.append(step(model, inputs, batch, optimizer, t.candidates, t.augment,
                               parallel))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            save(len(losses), optimizer)
        if parallel:
            parallel.sync()
    finally:
        if parallel:
            parallel.close()
    return TrainResult(t.method, len(losses), time.perf_counter() - started, losses)
