"""The library's two verbs, `train_run` and `evaluate`, as the CLI and experiments call them."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from mamf import adapters, distributed, methods, protocols
from mamf.budget import BUDGETS
from mamf.checkpoint import Checkpointer, tensor_mismatch
from mamf.config import (
    AT_MOST,
    Config,
    build_config,
    declared,
    dump_yaml,
    load_yaml,
    to_dict,
    unfrozen,
    value_of,
)
from mamf.data.coop_splits import split_file_sha256
from mamf.data.dataset import ImageDataset
from mamf.data.prompts import templates_tag
from mamf.device import compile_towers, resolve_device, set_tf32
from mamf.distributed import is_main, main_only
from mamf.errors import MamfError, shown
from mamf.finetune import trainable
from mamf.inputs import ModelInputs
from mamf.io import append_jsonl, atomic_write_text, follow_umask, fsync_path, writing
from mamf.lock import exclusive
from mamf.metatest import evaluation_tasks, meta_test, tuned_method
from mamf.models import load_model as build_model
from mamf.models.base import DualEncoder
from mamf.results import Row, cell_key, environment, read_rows
from mamf.samplers import prompt_embeddings, task_similarity
from mamf.training import train
from mamf.wiseft import Interpolation, alphas, starting_weights

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
RUN_CONFIG = "config.yaml"
RESULTS = "results.jsonl"


def fresh_start(model, inputs, pretrained, config: Config, trains: bool) -> None:
    """The prepared model as a run of `config` starts: pretrained weights (`pretrained`, a
    metatest.WeightSnapshot), the seed's generators, and for a method that `trains` its heads and
    adapters drawn from the seed."""
    pretrained.restore()
    seed_everything(config.seed)
    inputs.generator.manual_seed(config.seed)
    if trains:
        apply_heads(model, config)
        if adapters.enabled(config.train):
            adapters.initialise(model, config.seed)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


LATER_SECTIONS = ("baseline",)  # whole sections added later, left out while all at defaults


def config_id(config: Config) -> str:
    """The settings' hash, with the split file's sha256 (its content changes the numbers).
    `metatest.interpolate` is left out (a row's `alpha` says which mix it measured, and the other
    alphas do not change it), and so are settings added after rows were first written (declared
    `later`) at their defaults, so older results stay "the same settings"."""
    settings, defaults = to_dict(config), to_dict(Config())
    del settings["metatest"]["interpolate"]
    del settings["metatest"]["save_predictions"]  # what a row keeps, not what it measures
    for key in ("log_dir", "eval_every"):  # what is logged and where, not what is measured
        del settings["train"][key]
    untouched = [s for s in LATER_SECTIONS if settings[s] == defaults[s]]
    for key, setting in declared().items():
        section, _, name = key.rpartition(".")
        if setting.later and value_of(config, key) == _at(defaults, section)[name]:
            del _at(settings, section)[name]
    for section in untouched:
        del settings[section]
    if config.data.split_file:  # the file's content changes the numbers, not only its path
        settings["data"]["split_file_sha256"] = split_file_sha256(config.data.split_file)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _at(settings: dict, section: str) -> dict:
    return settings[section] if section else settings


def images_read(dataset: ImageDataset, config: Config, method: str,
                scored: Iterable[str]) -> np.ndarray:
    """The images a run of `method` reads when its rows score the splits `scored`: its
    training split if it trains, and dev if it tunes there or training is scored on it
    (`train.eval_every`). What a frozen image tower computes first (`prepare`'s `reads`)."""
    cls = methods.method_class(method)
    splits = set(scored)
    if cls.trains:
        splits.add("train")
        if config.train.eval_every:
            splits.add("dev")
    if cls.tunes_on_dev:
        splits.add("dev")
    protocol = protocols.get(config.data.protocol)
    pools = [protocol.pool(dataset, config.data, split, config.seed) for split in sorted(splits)]
    return np.unique(np.concatenate([p.all_images()[0] for p in pools])) if pools else \
        np.zeros(0, dtype=np.int64)


def prepare(config: Config, model: DualEncoder | None = None, fresh: bool = False,
            reads: Callable[[ImageDataset], np.ndarray] | None = None):
    """Model on its device (eval mode: frozen batch-norm statistics, no dropout), dataset, inputs.

    `fresh`: the model is about to be trained from its pretrained weights, so `heads=random`
    applies (before any frozen tower's outputs are cached). `reads(dataset)`: the images the
    caller will read (`images_read`); a frozen tower may compute only those now.
    """
    if not config.data.root:
        raise MamfError("no data folder given: pass --data DIR")
    device = distributed.local_device(resolve_device(config.device))
    set_tf32(device, config.train.tf32)
    distributed.init(device)
    seed_everything(config.seed)
    built = model is None
    if built:
        model = build_model(config.model)
    if fresh:
        apply_heads(model, config)
    if built and adapters.enabled(config.train):
        adapters.attach(model, config.train, config.seed)
    model.to(device).eval()
    compile_towers(model, device, config.train.compile)
    # under torchrun every rank reads (or decodes) the image cache itself, with no rank waiting
    # on another past the collective timeout; frozen-backbone features are computed in shares
    dataset = ImageDataset.load(config.data.root, model.image_size, config.data.subdataset,
                                config.data.template, config.data.templates)
    image_blocks, text_layers = unfrozen(config.train)
    inputs = ModelInputs(model, dataset, device, config.precision, image_blocks == 0,
                         text_layers == 0, config.train.crop_scale, seed=config.seed,
                         image_top_blocks=image_blocks or 0, text_top_layers=text_layers or 0,
                         reads=None if reads is None else reads(dataset))
    return model, dataset, inputs


def apply_heads(model: DualEncoder, config: Config) -> None:
    """`train.heads=random` (the official code): fresh projection heads drawn from the run's seed."""
    if config.train.heads == "random":
        model.reset_heads(torch.Generator().manual_seed(config.seed))


def weights_file(config: Config) -> str:
    """A run's trained weights: the whole model, or with an adapter only what trained."""
    return adapters.ADAPTER if adapters.enabled(config.train) else WEIGHTS


PARTIAL = "mamf_partial"  # safetensors metadata: the file holds only the trained tensors


def save_weights(model: DualEncoder, path: Path) -> None:
    """Written beside, fsynced, renamed over: the checkpoints are deleted right after. A run
    that trained only part of the model (a frozen tower, `train.unfreeze_*`) keeps only what
    trained; `load_run` rebuilds the rest from the named base model."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        try:
            if path.name == adapters.ADAPTER:
                save_file(adapters.trained_state(model), str(tmp))
            elif not all(p.requires_grad for p in model.parameters()):
                save_file(adapters.trained_state(model), str(tmp), metadata={PARTIAL: "1"})
            else:
                save_model(model, str(tmp))
            follow_umask(tmp)
            fsync_path(tmp)
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_path(path.parent)


def train_run(config: Config, out: Path, progress: bool = True) -> dict:
    """Train `config.train.method`; writes model.safetensors (adapter.safetensors with an
    adapter), config.yaml and train.json to `out`.

    Under torchrun every rank trains (data-parallel) and rank 0 alone writes.
    """
    with main_only(exclusive(out)):
        return _train_run(config, Path(out), progress)


SPLIT_SHA = "split-file.sha256"  # beside a run's config: the split file's content it trained on


def same_settings(path: Path, config: Config) -> bool:
    """Whether the run config at `path` holds `config`'s settings, the split file's content
    included (`SPLIT_SHA` beside it). Read through `build_config`, so a run written before a
    setting existed resumes when the setting sits at its default."""
    try:
        there, here = to_dict(build_config(load_yaml(path))), to_dict(config)
    except MamfError:  # a key this version no longer knows, or a damaged file
        return False
    for key in ("log_dir", "eval_every"):  # logs may go elsewhere now, or hold more
        there["train"].pop(key), here["train"].pop(key)
    there["metatest"].pop("save_predictions"), here["metatest"].pop("save_predictions")
    recorded = path.parent / SPLIT_SHA
    if there == here and config.data.split_file and recorded.is_file():
        return recorded.read_text(encoding="utf-8").strip() == \
            split_file_sha256(config.data.split_file)
    return there == here


def _train_run(config: Config, out: Path, progress: bool) -> dict:
    """A run folder holds one run: the same settings resume it (or report it done), other
    settings are refused so that nothing finished is overwritten."""
    resolved = dump_yaml(config)
    if (out / RUN_CONFIG).is_file() and not same_settings(out / RUN_CONFIG, config):
        raise MamfError(f"{out} holds a training run with other settings: choose another --out "
                        "(or delete it to start over)")
    if (out / "train.json").is_file() and (out / weights_file(config)).is_file():
        log.info("%s is already trained with these settings; nothing to do", out)
        return read_summary(out / "train.json")
    if is_main():
        atomic_write_text(out / RUN_CONFIG, resolved)
        if config.data.split_file:
            atomic_write_text(out / SPLIT_SHA, split_file_sha256(config.data.split_file) + "\n")
    checkpointer = Checkpointer(out / "checkpoints", config.train.checkpoint_every,
                                config.train.checkpoint_minutes, background=True)
    if (out / "checkpoints" / "latest.json").is_file():
        log.info("resuming from the checkpoint in %s", out / "checkpoints")
    model, dataset, inputs = prepare(config, fresh=True)
    if unfrozen(config.train)[0] == 0 and config.train.augment:
        log.info("image backbone frozen and cached: training-time augmentation is off")
    result = train(model, inputs, dataset, config, progress and is_main(), checkpointer, out)
    summary = {"method": result.method, "model": config.model, "dataset": dataset.name,
               "ways": config.data.ways, "seed": config.seed, "steps": result.steps,
               "images": result.images, "budget": result.budget,
               "train_time_s": round(result.seconds, 3), "first_loss": result.losses[0],
               "last_loss": result.losses[-1], "processes": distributed.world_size(),
               "mean_loss_first_tenth": _mean_part(result.losses, first=True),
               "mean_loss_last_tenth": _mean_part(result.losses, first=False),
               "losses": result.losses}
    if is_main():
        save_weights(model, out / weights_file(config))
        atomic_write_text(out / "train.json", json.dumps(summary, indent=1))
        checkpointer.clear()
    return summary


# what `mamf train` prints from a finished run's train.json (and "processes", newer runs only)
SUMMARY_TYPES = {"method": str, "dataset": str, "steps": int, "train_time_s": (int, float),
                 "mean_loss_first_tenth": (int, float), "mean_loss_last_tenth": (int, float)}


def read_summary(path: Path) -> dict:
    """A finished run's train.json; a damaged one is one clear line (the weights beside it are
    kept: nothing is retrained over them)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MamfError(f"{path} is unreadable ({e}): delete the run folder to train again") \
            from None
    if not (isinstance(summary, dict) and all(
            isinstance(summary.get(k), t) and not isinstance(summary.get(k), bool)
            for k, t in SUMMARY_TYPES.items()) and _is_count(summary.get("processes", 1))):
        raise MamfError(f"{path} is damaged (it needs {', '.join(SUMMARY_TYPES)}): delete the "
                        "run folder to train again")
    return summary


def run_training(run_dir: Path) -> dict:
    """What a row scored from a run folder records of its training (docs/method.md, "Budgets"):
    steps, images and budget from its train.json; a run trained before budgets has no images
    (null) and the native budget."""
    path = run_dir / "train.json"
    if not path.is_file():
        return {}
    summary = read_summary(path)
    images = summary.get("images")
    return {"train_steps": summary["steps"],
            "train_images": images if _is_count(images) else None,
            "train_budget": summary["budget"] if summary.get("budget") in BUDGETS else "native"}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _mean_part(losses: list[float], first: bool) -> float:
    k = max(1, len(losses) // 10)
    return float(np.mean(losses[:k] if first else losses[-k:]))


def load_run(run_dir: Path) -> tuple[Config, DualEncoder]:
    """A trained run's resolved config and its model with the trained weights (safetensors only)."""
    run_dir = Path(run_dir)
    config = build_config(load_yaml(run_dir / RUN_CONFIG)) if (run_dir / RUN_CONFIG).is_file() \
        else None
    weights = weights_file(config) if config else WEIGHTS
    if config is None or not (run_dir / weights).is_file():
        raise MamfError(f"{run_dir} is not a finished training run (needs {RUN_CONFIG} and "
                        f"{weights})")
    if adapters.enabled(config.train):
        model = starting_model(config)
        adapters.load_trained(model, run_dir / weights)
        return config, model
    model = build_model(config.model)
    try:
        attach_extension(model, config, run_dir / WEIGHTS)
        mismatch = tensor_mismatch(run_dir / WEIGHTS, model)
        with safe_open(str(run_dir / WEIGHTS), "pt") as f:
            partial = (f.metadata() or {}).get(PARTIAL) == "1"
        missing, unexpected = [], []
        if mismatch:
            pass  # reported below as damage, before anything is loaded
        elif partial:  # the untrained rest comes from the base model, heads as training began
            apply_heads(model, config)
            _, unexpected = model.load_state_dict(load_file(str(run_dir / WEIGHTS)),
                                                  strict=False)
        else:
            missing, unexpected = load_model(model, str(run_dir / WEIGHTS), strict=False)
    except MamfError:
        raise
    except Exception as e:  # safetensors raises several types for a damaged file
        raise MamfError(f"cannot read {run_dir / WEIGHTS}: {e}") from None
    if mismatch:
        raise MamfError(f"{run_dir / WEIGHTS} is damaged or of another model: {mismatch}")
    if missing or unexpected:
        raise MamfError(f"{run_dir / WEIGHTS} does not match model {config.model!r}")
    return config, model


def attach_extension(model: DualEncoder, config: Config, path: Path) -> None:
    """What the run's method trained beyond the model's weights (CoOp's context), rebuilt on
    the model from the weights file before the weights load."""
    prefix = f"{methods.EXTENSION}."
    with safe_open(str(path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118
    if state:
        methods.create(config.train.method, config).load_extension(model, state)


def starting_model(config: Config) -> DualEncoder:
    """The model as training of `config` starts: built, heads as set, adapters attached."""
    model = build_model(config.model)
    apply_heads(model, config)
    if adapters.enabled(config.train):
        adapters.attach(model, config.train, config.seed)
    return model


def ways_list(config: Config, n_classes: int, value) -> list[int]:
    """`ways` may be one n, a list, or 'all' (n = start_n .. N-1, the paper's sweep). The coop
    and base2novel protocols classify all N classes at once: their only size is N."""
    if protocols.get(config.data.protocol).all_way:
        if value not in (None, "") and str(value).strip().lower() not in ("all", "paper",
                                                                           str(n_classes)):
            raise MamfError(f"the {config.data.protocol} protocol classifies all {n_classes} "
                            f"classes at once: drop --ways (got {shown(value)})")
        return [n_classes]
    if value in (None, ""):
        return [config.data.ways]
    if isinstance(value, str) and value.strip().lower() in ("all", "paper"):
        top = n_classes - 1
        if config.data.start_n > top:
            raise MamfError(f"start_n={config.data.start_n} leaves no task size below N={n_classes}")
        return list(range(config.data.start_n, top + 1))
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        out = [int(v) for v in items]
    except ValueError:
        raise MamfError(f"--ways must be integers, a comma list, or 'all'; got "
                        f"{shown(value)}") from None
    top = AT_MOST["data.ways"]
    if any(not 2 <= w <= top for w in out):
        raise MamfError(f"ways must be between 2 and {top}, got {shown(value)}")
    return out


def shots_queries(dataset: ImageDataset, config: Config, split: str) -> tuple[int, int]:
    """The support and query sizes a row records, as the protocol sets them."""
    return protocols.get(config.data.protocol).shots_queries(dataset, config.data, split)


def evaluate(config: Config, out: Path, method: str, model: DualEncoder | None = None,
             ways: list[int] | None = None, run_dir: Path | None = None,
             progress: bool = True, trained_by: str | None = None) -> list[dict]:
    """Meta-test `method` for each task size; append one row per size to out/results.jsonl.

    `trained_by`: the method that trained the run's weights, when another method (a baseline's
    test time) scores them; the rows are then named `<trained_by>+<method>`."""
    out = Path(out)
    with main_only(exclusive(out)):
        return _evaluate(config, out, method, model, ways, run_dir, progress, trained_by)


def row_method(method: str, trained_by: str | None) -> str:
    """A row's method: the test-time method, prefixed by the one that trained the weights when
    they differ (`mamf+tip-adapter`)."""
    return method if trained_by in (None, method) else f"{trained_by}+{method}"


def _evaluate(config, out, method, model, ways, run_dir, progress, trained_by) -> list[dict]:
    """Under torchrun the tasks are sharded across ranks and only rank 0 writes. The rows'
    `task_similarity` is measured with the evaluated model's prompts. With
    `metatest.interpolate`, a trained run is scored at each alpha (`mamf.wiseft`)."""
    if is_main():  # one file per config_id, as an experiment keeps them: a row's settings
        kept = out / "configs" / f"{config_id(config)}.yaml"
        if not kept.exists():
            atomic_write_text(kept, dump_yaml(config))
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
    # query count, which follows from the data), it is skipped; anything else in the same cell
    # would make two numbers of one cell (one seed counted twice), so that is refused
    finished = distributed.from_main({cell_key(r): r for r in read_rows(out / RESULTS)}
                                     if is_main() else None)
    settings = config_id(config)
    prompts = prompt_embeddings(model, inputs, np.arange(len(dataset.classes)))
    rows = []
    for n in ways or [config.data.ways]:
        for alpha in alphas(config, method):
            probe = Row.from_json({**row_head(dataset, config, method, n, trained_by, alpha),
                                   "run": str(run_dir) if run_dir else None})
            at = "" if alpha is None else f" alpha {alpha}"
            done = finished.get(cell_key(probe))
            if done is not None and done.get("config_id") == settings and \
                    done["queries"] == probe.queries:
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
            row.update({"run": probe.run})
            if run_dir is not None:
                row.update(run_training(Path(run_dir)))
            if is_main():
                append_jsonl(out / RESULTS, row.to_json())
            rows.append(row.to_json())
    return rows


def trained_sampler(config: Config, method: str) -> str | None:
    """The task sampler behind a row: the run's, for a method that trains on tasks; else None."""
    return config.train.sampler if methods.method_class(method).draws_tasks else None


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
            "prompts": dataset.prompt_source,
            "split_file_sha256": split_file_sha256(config.data.split_file), "alpha": alpha}


def evaluate_prepared(model: DualEncoder, dataset: ImageDataset, inputs: ModelInputs,
                      config: Config, method: str, ways: int, progress: bool = True,
                      prompts: np.ndarray | None = None, trained_by: str | None = None,
                      alpha: float | None = None) -> Row:
    """Meta-test one task size on an already prepared model; returns the results row.
    `alpha`: the WiSE-FT mix the model holds now (`mamf.wiseft`), None for none.

    The row names the task sampler the method trained with (None for methods that draw no
    tasks) and, per test task, the mean pairwise cosine similarity of its classes' prompt
    embeddings `prompts` (all classes; default: the model's as it is now)."""
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
    mean, ci, extra = protocols.get(config.data.protocol).summary(accs)
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
