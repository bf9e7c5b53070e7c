"""The one training loop: runs any registered method over a dataset's training pool.

It owns what every method shares: the seeded generator and task sampler, progress, losses,
checkpoints and resume, and the DDP/FSDP lifecycle under torchrun. The method (`mamf.methods`)
says what a step consumes and how it updates.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mamf import methods, protocols
from mamf.catalogue import Config
from mamf.data.dataset import ImageDataset, Pool
from mamf.engine.chance import at_chance, collapsed, warn_if_chance
from mamf.engine.checkpoint import Checkpointer
from mamf.engine.data_parallel import DataParallel
from mamf.engine.metatest import evaluation_tasks, score
from mamf.engine.trainlog import TrainLog
from mamf.features.inputs import ModelInputs
from mamf.methods.base import PastTheEnd
from mamf.methods.finetune import read_losses
from mamf.models import adapters
from mamf.models.base import DualEncoder
from mamf.parallel import distributed
from mamf.protocols.base import name_mask
from mamf.system import denormals
from mamf.system.errors import MamfError
from mamf.system.progress import bar as progress_bar
from mamf.tasks import samplers

log = logging.getLogger(__name__)

IMAGES = "train_images"  # the images counted so far, kept beside a checkpoint's stream state
READ_EVERY = 50  # steps whose losses a GPU run reads from the device at once


@dataclass
class TrainResult:
    method: str
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    images: int | None = None  # back-propagated images (None: resumed from an older checkpoint)
    budget: str = "native"
    # the loss ended at a uniform guess (`mamf.engine.chance`), and got there from below (collapsed)
    at_chance: bool = False
    collapsed: bool = False


def train_pool(dataset: ImageDataset, config: Config) -> Pool:
    """The training split (as the protocol draws it), restricted by `data.train_match` to images
    whose file name holds it (a class left with none is dropped, with a warning)."""
    d = config.data
    pool = protocols.get(d.protocol).pool(dataset, d, "train", config.seed)
    if d.train_match is None:
        return pool
    keep = name_mask(dataset, d.train_match)
    images = [imgs[keep[imgs]] for imgs in pool.images]
    dropped = [dataset.classes[c] for c, imgs in zip(pool.classes, images) if len(imgs) == 0]
    if len(dropped) == len(images):
        raise MamfError(f"data.train_match={d.train_match!r} matches no training image of "
                        f"{dataset.name}")
    if dropped:
        log.warning("data.train_match=%r: %d training class(es) have no matching image and are "
                    "left out of training (%s%s)", d.train_match, len(dropped),
                    ", ".join(map(repr, dropped[:3])), ", ..." if len(dropped) > 3 else "")
    kept = [i for i, imgs in enumerate(images) if len(imgs)]
    return Pool(pool.classes[kept], tuple(images[i] for i in kept))


def make_sampler(method: methods.TrainedMethod, model: DualEncoder, inputs: ModelInputs, pool: Pool,
                 config: Config) -> samplers.TaskSampler | None:
    """The task sampler of a method that draws tasks; it sees the model as training starts."""
    if not method.draws_tasks:
        return None

    def class_embeddings() -> np.ndarray:
        return samplers.prompt_embeddings(model, inputs, pool.classes)

    return samplers.create(config.train.sampler, pool, config, class_embeddings)


def check_start(start: int, steps: int | None, checkpointer: Checkpointer) -> None:
    """A checkpoint past the run's last step is another run's: resuming it would report a
    finished run that this config never trained. `steps` None: the stream said it has ended."""
    if steps is None or start > steps:
        end = "end" if steps is None else f"{steps} steps"
        raise MamfError(f"the checkpoint in {checkpointer.folder} is at step {start}, past the "
                        f"{end} of this run: it belongs to another run; delete it to start over")


@denormals.flushed()  # a collapsing run's subnormal gradients cost 20x on a CPU
def train(model: DualEncoder, inputs: ModelInputs, dataset: ImageDataset, config: Config,
          progress: bool = True, checkpointer: Checkpointer | None = None,
          log_folder: Path | None = None) -> TrainResult:
    """Run `config.train.method`; deterministic given `config.seed` on CPU.

    Under torchrun, methods that are `data_parallel` train over shares of each global batch
    (`mamf.engine.data_parallel`); the others (FOMAML) split their work across the ranks themselves. Either
    way the steps are a single process's.

    With a `checkpointer`, state is saved every `checkpointer.every` steps and a run resumes from
    the newest checkpoint, ending with the same weights as an uninterrupted run.
    """
    config = with_steps(config)
    t, d = config.train, config.data
    method = methods.create(t.method, config)
    pool = train_pool(dataset, config)
    rng = np.random.default_rng([config.seed, 11, d.ways])
    sampler = make_sampler(method, model, inputs, pool, config)  # before weights are restored
    method.add_to_model(model, inputs)  # what it trains beyond the model's weights (CoOp's)
    resume = checkpointer.restore(model) if checkpointer else None
    start = resume.step if resume else 0
    if distributed.from_main(start) != start:
        raise MamfError(f"rank {distributed.rank()} sees another checkpoint in "
                        f"{checkpointer.folder} than rank 0: every node needs the run folder on "
                        "one shared file system")
    losses: list[float] = list(resume.losses) if resume else []
    uncounted = False  # resumed from a checkpoint that did not count images
    parallel = None
    if distributed.world_size() > 1:
        if method.data_parallel:
            parallel = DataParallel(model, t.parallel)
        elif t.parallel == "fsdp":
            raise MamfError(f"train.parallel=fsdp is for data-parallel methods: {method.name} "
                            "shares its work across the ranks itself, each holding the whole "
                            "model")
    started = time.perf_counter()
    main = distributed.is_main()
    trainlog = TrainLog(log_folder if main else None, t.log_dir if main else None, start)
    dev = DevScore(model, inputs, dataset, config) if t.eval_every else None
    # LoRA's dropout masks: from the run's own generator, on its own seed (not the crops')
    dropout = adapters.dropout_generator(inputs.device, int(np.random.default_rng(
        [config.seed, 17]).integers(2**62))) if adapters.enabled(t) and t.lora_dropout > 0 else None
    try:
        if dropout is not None:  # the model stays in eval mode; only the adapters' dropout trains
            adapters.dropout_active(model, True, dropout)
        method.begin(model, inputs, pool, rng, sampler, parallel)
        schedule = LRSchedule(method, t.lr_schedule)
        schedule.at(start)  # before a resumed optimiser state, which holds the same rate
        if resume:
            if method.steps is not None:
                check_start(start, method.steps, checkpointer)
            stream_state = dict(resume.stream_state)
            counted = stream_state.pop(IMAGES, None)  # absent in checkpoints before budgets
            try:
                method.load_stream_state(stream_state)
            except PastTheEnd:
                check_start(start, None, checkpointer)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise MamfError(f"the checkpoint in {checkpointer.folder} is damaged: its "
                                f"stream state does not fit {method.name} ({e!r:.80}); delete "
                                "it to start over") from None
            checkpointer.load_optimizer(method.optimizer, resume.optimizer_state,
                                        method.load_optimizer_state)
            method.images = counted if isinstance(counted, int) else 0
            uncounted = not isinstance(counted, int)
            inputs.generator.set_state(resume.generator_state)
            if resume.global_generator_state is not None:
                torch.set_rng_state(resume.global_generator_state)
            if dropout is not None and resume.dropout_generator_state is not None:
                try:
                    dropout.set_state(torch.tensor(resume.dropout_generator_state,
                                                   dtype=torch.uint8))
                except RuntimeError:
                    raise MamfError(f"the checkpoint in {checkpointer.folder} is damaged: its "
                                    "dropout generator state is not one of this device's; "
                                    "delete it to start over") from None
        total = None if method.steps is None else method.steps - start
        seen = inputs.images_seen
        bar = progress_bar(total=total, enabled=progress, desc=f"training {method.name}", unit="step",
                           leave=False)
        # the losses stay on the device until read, every `read_every` steps (each step on a
        # CPU, where reading costs nothing), before a dev score and a checkpoint, and at the end
        read_every = 1 if inputs.device.type == "cpu" else READ_EVERY
        pending: list[tuple] = []

        def read() -> None:
            values = read_losses([row[1] for row in pending])
            losses.extend(values)
            trainlog.steps([(row[0], v, *row[2:]) for row, v in zip(pending, values)])
            if values:
                bar.set_postfix(loss=f"{values[-1]:.3f}", refresh=False)
            pending.clear()

        for i in itertools.count(start):
            if method.steps is not None and i >= method.steps:
                break
            loss = method.step(i)
            if loss is None:  # a stream of unknown length has ended
                break
            images = inputs.images_seen - seen
            dev_acc = None
            due = checkpointer is not None and checkpointer.due(i + 1)
            if dev and (i + 1) % t.eval_every == 0:
                scoring = time.perf_counter()
                dev_acc = dev()
                trainlog.exclude(time.perf_counter() - scoring)
            pending.append((i + 1, loss, _lr(method), images, dev_acc))
            if len(pending) >= read_every or due or dev_acc is not None:
                read()
            schedule.at(i + 1)
            seen = inputs.images_seen
            bar.update(1)
            if due:
                # every rank holds the same weights, optimiser state and streams: rank 0
                # writes them (under FSDP all ranks first gather the whole state)
                state = method.optimizer_state()
                if parallel:
                    parallel.sync()
                if distributed.is_main():
                    stream_state = {**method.stream_state(), IMAGES: method.images}
                    checkpointer.save(i + 1, model, state, stream_state, inputs.generator,
                                      losses, dropout)
        read()
        bar.close()
        if parallel:
            parallel.sync()
        if checkpointer:
            checkpointer.wait()  # the last checkpoint on the disk before the run goes on
    finally:
        if checkpointer:
            checkpointer.wait(raise_error=False)
        trainlog.close()
        if dropout is not None:
            adapters.dropout_active(model, False)
        if parallel:
            parallel.close()
    classes = method.chance_classes(pool)
    if distributed.is_main():
        warn_if_chance(config, method.name, losses, classes, method.chance_hint(),
                       model.chance_loss)
    return TrainResult(method.name, len(losses), time.perf_counter() - started, losses,
                       None if uncounted else method.images, t.budget,
                       at_chance(losses, classes, model.chance_loss) is not None,
                       collapsed(losses, classes, model.chance_loss))


def with_steps(config: Config) -> Config:
    """`train.steps_per_shot` k: the run takes k x `data.shots` steps (CLIP-LoRA's budget)."""
    t = config.train
    if t.steps_per_shot is None:
        return config
    steps = t.steps_per_shot * config.data.shots
    return dataclasses.replace(config, train=dataclasses.replace(t, steps=steps,
                                                                 steps_per_shot=None))


def cosine_lr(base: float, step: int, steps: int) -> float:
    """Cosine decay (Loshchilov & Hutter 2017, SGDR without restarts): `base` at step 0, 0 after
    the last step, base * (1 + cos(pi * step / steps)) / 2 between."""
    return base * (1 + math.cos(math.pi * (min(step, steps) / steps))) / 2  # (int / int: any
    # step count, however large, is divided exactly before it meets a float)


class LRSchedule:
    """`train.lr_schedule`: the rate of the method's optimiser is a function of the step alone,
    set before each step, so a resumed run takes the same rates (and a checkpoint's optimiser
    settings, saved after step i, hold the rate of step i + 1)."""

    def __init__(self, method: methods.TrainedMethod, kind: str):
        self.method, self.kind = method, kind
        # each group's rate as the method built its optimiser (before any resumed state)
        self.bases = [g["lr"] for g in method.optimizer.param_groups]
        if kind == "cosine" and method.steps is None:
            raise MamfError(f"train.lr_schedule=cosine needs the run's step count, which "
                            f"{method.name} knows only as it ends (train.schedule=sequential): "
                            "use train.schedule=sampled or lr_schedule=constant")

    def at(self, step: int) -> None:
        if self.kind == "constant":
            return
        for group, base in zip(self.method.optimizer.param_groups, self.bases):
            group["lr"] = cosine_lr(base, step, self.method.steps)


class DevScore:
    """The dev accuracy `train.eval_every` logs: the model's query accuracy, as it is after the
    step, on the dev split's tasks (drawn as the meta-test draws test tasks), scored against the
    class prompts without test-time adaptation, so that it costs forward passes only and
    changes no weight and no random stream of the training. Every rank scores alike."""

    def __init__(self, model: DualEncoder, inputs: ModelInputs, dataset: ImageDataset,
                 config: Config):
        if distributed.world_size() > 1 and config.train.parallel == "fsdp":
            raise MamfError("train.eval_every cannot go with train.parallel=fsdp: the sharded "
                            "model has no whole copy to score")
        self.model, self.inputs = model, inputs
        self.dropout = adapters.enabled(config.train) and config.train.lora_dropout > 0
        try:
            self.tasks = evaluation_tasks(dataset, config, "dev", config.data.ways)
        except MamfError as e:  # a method that trains on no tasks never asked for data.ways
            raise MamfError(f"train.eval_every scores {config.data.ways}-way dev tasks "
                            f"(data.ways, --ways): {e}") from None

    def __call__(self) -> float:
        if self.dropout:
            adapters.dropout_active(self.model, False)
        try:
            accs = [score(self.model, self.inputs, task) for task in self.tasks]
        finally:
            if self.dropout:
                adapters.dropout_active(self.model, True)
        return float(np.mean(accs))


def _lr(method: methods.TrainedMethod) -> float | None:
    """The learning rate of the method's optimiser (its first group), None without one."""
    optimizer = getattr(method, "optimizer", None)
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None
