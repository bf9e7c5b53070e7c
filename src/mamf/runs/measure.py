"""A measurement becomes rows: meta-test a method at each task size and write one results row
per size. The one path from a measurement to a row, used by `evaluate` and experiments alike."""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from pathlib import Path

import numpy as np

from mamf import (
    methods,
    plugins,  # noqa: F401  (every plug-in joins the catalogue before a config is built)
    protocols,
)
from mamf.catalogue import Config
from mamf.config import build_config, dump_yaml, load_yaml
from mamf.data.coop_splits import split_file_sha256
from mamf.data.dataset import ImageDataset
from mamf.data.prompts import templates_tag
from mamf.engine.metatest import evaluation_tasks, meta_test, tuned_method
from mamf.engine.wiseft import Interpolation, alphas, starting_weights
from mamf.features.inputs import ModelInputs
from mamf.methods.finetune import trainable
from mamf.models.base import DualEncoder
from mamf.parallel import distributed
from mamf.parallel.distributed import is_main, main_only
from mamf.results import Row, environment, measured_key, read_rows
from mamf.runs.config_id import config_id
from mamf.runs.prepare import prepare, starting_model
from mamf.runs.run_folder import RUN_CONFIG, run_training
from mamf.system.errors import MamfError
from mamf.system.io import append_jsonl, atomic_write_text
from mamf.system.lock import exclusive
from mamf.tasks.samplers import prompt_embeddings, task_similarity

log = logging.getLogger(__name__)


RESULTS = "results.jsonl"


def shots_queries(dataset: ImageDataset, config: Config, split: str) -> tuple[int, int]:
    """The support and query sizes a row records, as the protocol sets them."""
    return protocols.get(config.data.protocol).shots_queries(dataset, config.data, split)


def evaluate(config: Config, out: Path, method: str, model: DualEncoder | None = None,
             ways: list[int] | None = None, run_dir: Path | None = None,
             progress: bool = True, trained_by: str | None = None) -> list[Row]:
    """Meta-test `method` for each task size; append one row per size to out/results.jsonl and
    return them (a size already measured with these settings: its row as written).

    `trained_by`: the method that trained the run's weights, when another method (a baseline's
    test time) scores them; the rows are then named `<trained_by>+<method>`."""
    out = Path(out)
    with main_only(exclusive(out)):
        return _evaluate(config, out, method, model, ways, run_dir, progress, trained_by)


def row_method(method: str, trained_by: str | None) -> str:
    """A row's method: the test-time method, prefixed by the one that trained the weights when
    they differ (`mamf+tip-adapter`)."""
    return method if trained_by in (None, method) else f"{trained_by}+{method}"


def _evaluate(config, out, method, model, ways, run_dir, progress, trained_by) -> list[Row]:
    """Under torchrun the tasks are sharded across ranks and only rank 0 writes. The rows'
    `task_similarity` is measured with the evaluated model's prompts. With
    `metatest.interpolate`, a trained run is scored at each alpha (`mamf.engine.wiseft`)."""
    model, dataset, inputs = prepare(config, model)
    mix = None
    if alphas(config, method) != [None]:
        if run_dir is None:
            raise MamfError("metatest.interpolate mixes a trained run with its zero-shot start: "
                            "evaluate a run folder (--run)")
        start = starting_model(build_config(load_yaml(Path(run_dir) / RUN_CONFIG)))
        mix = Interpolation(model, starting_weights(start))
        del start
    # a measurement already in results.jsonl is not taken twice: same settings (and the same
    # query count, which follows from the data), it is skipped; anything else of the same
    # `measured_key` would make two numbers of one measurement (one seed counted twice), so that
    # is refused
    finished = distributed.from_main({measured_key(r): r for r in read_rows(out / RESULTS)}
                                     if is_main() else None)
    this_id = config_id(config)
    prompts = prompt_embeddings(model, inputs, np.arange(len(dataset.classes)))
    rows = []
    for n in ways or [config.data.ways]:
        for alpha in alphas(config, method):
            probe = Row.from_json({**row_head(dataset, config, method, n, trained_by, alpha),
                                   "run": str(run_dir) if run_dir else None})
            at = "" if alpha is None else f" alpha {alpha}"
            done = finished.get(measured_key(probe))
            if done is not None and done.config_id == this_id and \
                    done.queries == probe.queries:
                log.info("%s %d-way seed %d%s is already in %s: skipped", probe.method, n,
                         config.seed, at, out / RESULTS)
                rows.append(done)
                continue
            if done is not None:
                raise MamfError(f"{out / RESULTS} already holds {probe.method} {n}-way seed "
                                f"{config.seed}{at} on {dataset.name} ({config.metatest.split}) "
                                "measured with other settings: choose another --out")
            with mix.at(alpha) if mix else contextlib.nullcontext():
                row = evaluate_prepared(model, dataset, inputs, config, method, n, progress,
                                        prompts, trained_by, alpha)
            training = run_training(Path(run_dir)) if run_dir is not None else {}
            rows.append(record(row, out / RESULTS, config, {"run": probe.run, **training}))
    return rows


def record(row: Row, results: Path, config: Config, context: dict) -> Row:
    """The one way a measured row is finished and kept, for `evaluate` and experiments alike:
    what it was measured in (`context`: the run it scored and its training, or the experiment and
    its training) joins the row, which is appended to `results`, with its settings written once
    per config_id beside it (configs/<config_id>.yaml, what the report's Setup reads). Under
    torchrun only rank 0 writes."""
    row.update(context)
    if is_main():
        kept = results.parent / "configs" / f"{row.config_id}.yaml"
        if not kept.exists():
            atomic_write_text(kept, dump_yaml(config))
        append_jsonl(results, row.to_json())
    return row


def trained_sampler(config: Config, method: str) -> str | None:
    """The task sampler behind a row: the run's, for a method that trains on tasks; else None."""
    kind = methods.method_class(method)
    draws = issubclass(kind, methods.TrainedMethod) and kind.draws_tasks
    return config.train.sampler if draws else None


def row_head(dataset: ImageDataset, config: Config, method: str, ways: int,
             trained_by: str | None = None, alpha: float | None = None) -> dict:
    """The leading fields of the row `evaluate_prepared` writes, in its order: what names the
    measurement (`Row.key` but the `run`, which `evaluate` adds) and the data it was made on;
    known before anything is measured, so `evaluate` can tell what is already done."""
    split = config.metatest.split
    shots, queries = shots_queries(dataset, config, split)
    combined = {"test_method": method, "trained_by": trained_by} \
        if row_method(method, trained_by) != method else {}
    return {"method": row_method(method, trained_by), **combined, "model": config.model,
            "dataset": dataset.name,
            "protocol": config.data.protocol, "ways": ways, "shots": shots, "queries": queries,
            "seed": config.seed, "split": split,
            "sampler": trained_sampler(config, trained_by or method),
            "templates": templates_tag(config.data.templates) if dataset.ensemble else None,
            "prompts": dataset.prompt_source, **dataset.row_fields(),
            "split_file_sha256": split_file_sha256(config.data.split_file) or
            (dataset.coop.sha256 if dataset.coop else None), "alpha": alpha}


def evaluate_prepared(model: DualEncoder, dataset: ImageDataset, inputs: ModelInputs,
                      config: Config, method: str, ways: int, progress: bool = True,
                      prompts: np.ndarray | None = None, trained_by: str | None = None,
                      alpha: float | None = None) -> Row:
    """Meta-test one task size on an already prepared model; returns the results row.
    `alpha`: the WiSE-FT mix the model holds now (`mamf.engine.wiseft`), None for none.

    The row names the task sampler the method trained with (None for methods that draw no
    tasks) and, per test task, the mean pairwise cosine similarity of its classes' prompt
    embeddings `prompts` (all classes; default: the model's as it is now)."""
    inputs.crop_scale = config.train.crop_scale  # the row's own (test-time augmentation)
    head = row_head(dataset, config, method, ways, trained_by, alpha)
    tasks = evaluation_tasks(dataset, config, config.metatest.split, ways)
    if prompts is None:
        prompts = prompt_embeddings(model, inputs, np.arange(len(dataset.classes)))
    # a one-class task (base2novel's novel half of 3 classes) has no pair: null, never NaN
    similarity = [round(task_similarity(prompts, t.classes), 6) if t.ways > 1 else None
                  for t in tasks]
    started = time.perf_counter()
    plugin, chosen = tuned_method(model, inputs, dataset, method, config, ways)
    predictions = [] if config.metatest.save_predictions else None
    accs = meta_test(model, inputs, tasks, plugin, config, ways, progress, predictions)
    mean, ci, extra = protocols.get(config.data.protocol).aggregate(accs)
    return Row.from_json({
        **head, "trainable_params": sum(p.numel() for p in trainable(model)),
        "n_tasks": len(tasks), "acc_mean": mean, "acc_ci95": ci,
        "task_accs": accs,
        "task_similarity": similarity,
        "time_s": round(time.perf_counter() - started, 3), "config_id": config_id(config),
        "host": platform.node(), **environment(str(inputs.device)),
        **({"chosen_on_dev": chosen} if chosen is not None else {}),
        **({"class_names": list(dataset.classes), "predictions": predictions}
           if predictions is not None else {}), **extra})

