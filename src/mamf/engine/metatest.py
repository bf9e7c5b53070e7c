"""The meta-test, shared by every method: for each test task, start from the trained weights,
adapt on the support set the way the method prescribes, then score the query set.

How a method adapts is the method's own (`TestTimeMethod.adapt`, which returns the task's
`Scorer`; a method that chooses hyper-parameters does so on dev-split tasks first,
`TestTimeMethod.tune`); scoring the scorer's predictions is shared. The trained weights are kept
in memory and copied back before each task (no disk reads, no model rebuilds).
"""

from __future__ import annotations

import numpy as np
import torch

from mamf import methods, protocols
from mamf.catalogue import Config
from mamf.data.dataset import ImageDataset
from mamf.features.inputs import ModelInputs
from mamf.methods import batched
from mamf.methods.base import accuracy, predict, score  # noqa: F401  (default scoring)
from mamf.methods.finetune import trainable
from mamf.methods.scorer import Scorer
from mamf.models.base import DualEncoder
from mamf.parallel.distributed import gather_by_index, is_main, rank, world_size
from mamf.results import encode_predictions
from mamf.system import denormals
from mamf.system.progress import bar as progress_bar
from mamf.tasks.task import Task


def evaluation_tasks(dataset: ImageDataset, config: Config, split: str, ways: int) -> list[Task]:
    """The tasks of one (dataset, split, ways, seed): identical for every method."""
    return protocols.get(config.data.protocol).test_tasks(dataset, config, split, ways)


class WeightSnapshot:
    """The trained weights held in memory; `restore` copies them back in place.

    Only what adaptation can change is kept: the trainable parameters. Frozen parameters never
    change, and models stay in eval mode, so buffers (batch-norm statistics) never change either;
    copying them would only cost time.
    """

    def __init__(self, model: torch.nn.Module):
        self.live = trainable(model)  # the parameter objects themselves: found once, not per task
        self.saved = [t.detach().clone() for t in self.live]

    @torch.no_grad()
    def restore(self) -> None:
        for t, saved in zip(self.live, self.saved):
            t.copy_(saved)


@denormals.flushed()  # as training: subnormal gradients are slow on a CPU
def meta_test(model: DualEncoder, inputs: ModelInputs, tasks: list[Task],
              method: str | methods.TestTimeMethod, config: Config, ways: int,
              progress: bool = True, predictions: list | None = None) -> list[float]:
    """Per-task accuracies. With `metatest.reset` off, adaptation carries over between tasks
    (the official code's behaviour); either way the model ends as it started. `method`: a name,
    or a method already tuned on dev tasks (`tuned_method`). `predictions`, a list, receives
    each task's `encode_predictions`, in task order."""
    plugin = methods.create(method, config) if isinstance(method, str) else method
    method = plugin.name
    snapshot = WeightSnapshot(model)
    # under torchrun each rank takes every world_size-th task; each task's randomness depends
    # only on its index, so the gathered accuracies equal a single process's. Carried-over
    # adaptation (reset off) is sequential by nature and is not sharded.
    shard = config.metatest.reset
    mine = [i for i in range(len(tasks)) if not shard or i % world_size() == rank()]
    local = {}
    keep = predictions is not None
    tuning = plugin.fine_tuning() if config.metatest.batched else None
    if batched.applies(inputs, tuning, config.metatest.augment, config.metatest.reset):
        rngs = {i: np.random.default_rng([config.seed, 103, ways, i]) for i in mine}
        given = batched.scorers(model, inputs, {i: tasks[i] for i in mine}, rngs, tuning)
        for i, scorer in given.items():
            local[i] = measured(scorer, tasks[i], keep)
        mine = [i for i in mine if i not in given]  # left to the loop
    bar = progress_bar(mine, enabled=progress and is_main(), desc=f"meta-test {method} {ways}-way",
                       leave=False)
    try:  # a task whose adaptation diverges must not leave its weights behind
        for i in bar:
            if config.metatest.reset:
                snapshot.restore()
            rng = np.random.default_rng([config.seed, 103, ways, i])
            local[i] = measured(plugin.adapt(model, inputs, tasks[i], rng), tasks[i], keep)
    finally:
        snapshot.restore()
    both = gather_by_index(local, len(tasks)) if shard else [local[i] for i in sorted(local)]
    if predictions is not None:
        predictions.extend(p for _, p in both)
    return [a for a, _ in both]


def measured(scorer: Scorer, task: Task, keep: bool) -> tuple[float, list | None]:
    """A task's accuracy from its scorer, and (`keep`) its `encode_predictions`."""
    predicted = scorer.predict()
    return accuracy(predicted, task), encode_predictions(task, predicted) if keep else None


def tuned_method(model: DualEncoder, inputs: ModelInputs, dataset: ImageDataset, method: str,
                 config: Config, ways: int) -> tuple[methods.TestTimeMethod, dict | None]:
    """The method, its hyper-parameters chosen on the dev split's tasks (drawn as test tasks
    are) when it chooses any; returns it and what it chose (None: nothing to choose)."""
    plugin = methods.create(method, config)
    if not plugin.tunes_on_dev:
        return plugin, None
    dev = evaluation_tasks(dataset, config, "dev", ways)
    return plugin, plugin.tune(model, inputs, dev)
