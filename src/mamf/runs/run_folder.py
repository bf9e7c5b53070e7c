"""A training run's folder: train into it (resuming, or refusing other settings), its
config.yaml, weights and train.json, and loading a finished run back."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from mamf import (
    methods,
    plugins,  # noqa: F401  (every plug-in joins the catalogue before a config is built)
)
from mamf.catalogue import Config, unfrozen
from mamf.config import build_config, dump_yaml, load_yaml, to_dict
from mamf.data.coop_splits import split_file_sha256
from mamf.engine.checkpoint import Checkpointer, tensor_mismatch
from mamf.engine.training import train
from mamf.methods.budget import BUDGETS
from mamf.models import adapters
from mamf.models import load_model as build_model
from mamf.models.base import DualEncoder
from mamf.parallel import distributed
from mamf.parallel.distributed import is_main, main_only
from mamf.runs.prepare import apply_heads, prepare, starting_model
from mamf.system.errors import MamfError
from mamf.system.io import atomic_write_text, follow_umask, fsync_path, writing
from mamf.system.lock import exclusive

log = logging.getLogger(__name__)


WEIGHTS = "model.safetensors"


RUN_CONFIG = "config.yaml"


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

