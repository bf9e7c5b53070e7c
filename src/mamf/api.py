"""The Python API: what the `mamf` command does, callable from a script or a notebook.

    from mamf import make_config, train, evaluate, report, classify
    config = make_config({"data": {"root": "data/emoji"}, "train": {"steps": 20}})
    train(config, "runs/emoji")
    rows = evaluate("runs/emoji", "results", ways=[5])
    report("results")

Nothing here changes the process (no allocator tuning, no logging setup): that is the CLI's job,
or `mamf.keep_freed_memory()`'s when a script asks for it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mamf.config import Config, build_config, load_yaml, to_dict
from mamf.errors import MamfError, shown

log = logging.getLogger("mamf")

if TYPE_CHECKING:
    import numpy as np

    from mamf.models.base import DualEncoder


PRESETS = ("cpu", "clip-lora")  # shipped settings files: src/mamf/configs/<name>.yaml


def preset(name: str) -> dict:
    """A shipped preset's settings (`--preset NAME`)."""
    from importlib.resources import files

    if name not in PRESETS:
        raise MamfError(f"unknown preset {name!r}: use {', '.join(PRESETS)}")
    return load_yaml(Path(str(files("mamf") / "configs" / f"{name}.yaml")))


def settings_file(path: str | Path) -> dict:
    """A YAML settings file, or a shipped preset by name (`cpu`) when no such file exists."""
    if str(path) in PRESETS and not Path(path).exists():
        return preset(str(path))
    return load_yaml(path)


def make_config(settings: dict | str | Path | Config | None = None,
                overrides: dict | None = None, **dotted) -> Config:
    """A validated Config from a nested dict, a YAML file's path, or a Config; then `overrides`
    (dotted keys, `{"train.lr": 1e-5}`) and keywords with `.` written as `__` (`train__lr=1e-5`).
    A string may name a shipped preset: `make_config("cpu")`."""
    if isinstance(settings, Config):
        settings = to_dict(settings)
    elif isinstance(settings, (str, Path)):
        settings = settings_file(settings)
    return build_config(settings, {**(overrides or {}),
                                   **{k.replace("__", "."): v for k, v in dotted.items()}})


@contextlib.contextmanager
def _bars(progress: bool) -> Iterator[None]:
    """`progress=False` silences every bar of the call, a cache build's included."""
    from mamf import progress as bars

    before = bars.is_quiet()
    bars.set_quiet(before or not progress)
    try:
        yield
    finally:
        bars.set_quiet(before)


def train(config: Config | dict | str | Path, out: str | Path, progress: bool = True) -> dict:
    """Train `config.train.method` into the run folder `out`; returns its summary (train.json)."""
    from mamf.run import train_run

    config = make_config(config)
    with _bars(progress):
        return train_run(config, Path(out), progress=progress)


def load_run(run: str | Path) -> tuple[Config, DualEncoder]:
    """A finished run's config and its model with the trained weights."""
    from mamf.run import load_run as load

    return load(Path(run))


def evaluate(source: Config | dict | str | Path, out: str | Path, *, method: str | None = None,
             ways: int | str | Sequence[int] | None = None, progress: bool = True,
             settings: dict | None = None, overrides: dict | None = None) -> list[dict]:
    """Meta-test a trained run (a run folder) or a model zero-shot (a config, dict or YAML);
    rows are appended to out/results.jsonl and returned. `ways`: n, a list, or 'all'; `method`:
    a test-time method (default: the run's own, or zeroshot without a run). With a run,
    `settings` (nested) and `overrides` (dotted) change its config; otherwise `overrides` do."""
    from mamf.config import deep_merge
    from mamf.data.folder import scan_folder
    from mamf.methods import names
    from mamf.run import evaluate as meta_test
    from mamf.run import ways_list

    model, run_dir, trained_by = None, None, None
    test_time = names(trained=False)
    if method is not None and method not in names():
        raise MamfError(f"unknown method {method!r}; choose from {', '.join(names())}")
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        run_dir = Path(source)
        run_config, model = load_run(run_dir)
        trained_by = run_config.train.method
        config = make_config(deep_merge(to_dict(run_config), settings or {}), overrides)
        if config.model != run_config.model:
            raise MamfError("a trained run's model cannot be changed at evaluation")
        _refuse_training_changes(run_dir, run_config, config)
        if method and method not in test_time and method != trained_by:
            raise MamfError(f"--method {method} trains: evaluate a run it trained with --run, "
                            f"or pick a test-time method ({', '.join(test_time)})")
        method = method or trained_by
    else:
        config = make_config(source, overrides)
        if method and method not in test_time:
            raise MamfError(f"--method {method} trains: evaluate a run it trained with --run, "
                            f"or pick a test-time method ({', '.join(test_time)})")
        method = method or test_time[0]
    if not config.data.root:
        raise MamfError("no data folder given: set data.root (--data DIR)")
    n_classes = len(scan_folder(config.data.root, config.data.subdataset).classes)
    sizes = ways_list(config, n_classes, list(ways) if isinstance(ways, (list, tuple)) else ways)
    with _bars(progress):
        return meta_test(config, Path(out), method, model, sizes, run_dir, progress=progress,
                         trained_by=trained_by)


def _refuse_training_changes(run_dir: Path, trained: Config, asked: Config) -> None:
    """A trained run's training settings (train.*, and its method's own training rate) are
    what trained it: changed at evaluation they would train nothing, yet its rows and the
    report's Setup would show them as the run's."""
    from mamf.config import value_of
    from mamf.methods import method_class

    keys = [f"train.{k}" for k in to_dict(trained)["train"]]
    rate = method_class(trained.train.method).train_rate
    keys += [rate] if rate and rate not in keys else []
    for key in keys:
        was, now = value_of(trained, key), value_of(asked, key)
        if was != now:
            raise MamfError(f"{key} cannot change at evaluation: {run_dir} was trained with "
                            f"{shown(was)}, not {shown(now)} (train another run to change it)")


def report(folder: str | Path, title: str | None = None, reference: str | None = None) -> dict:
    """Write the report of a results folder (report.md, report.html, figures), as `mamf report`;
    `reference`: the method every other is paired against (default: classical FT, else
    zero-shot). Returns the files written."""
    from mamf.report import write_report
    from mamf.results import read_rows

    folder = Path(folder)
    if not (folder / "results.jsonl").is_file():
        raise MamfError(f"{folder} holds no results.jsonl")
    rows = read_rows(folder / "results.jsonl")
    if not rows:
        raise MamfError(f"no results rows in {folder}")
    return write_report(rows, folder, title or folder.name, reference)


def classify(model: DualEncoder | str | Path, images: Sequence, labels: Sequence[str],
             template: str = "A photo of a {label}.") -> np.ndarray:
    """Zero-shot scores of `images` (paths, or uint8 H x W x 3 arrays) against the prompts of
    `labels`, with a model or a trained run folder: probabilities, one row per image."""
    import numpy as np
    import torch

    from mamf.data.cache import decode

    if isinstance(model, (str, Path)):
        model = load_run(model)[1]
    if not labels:
        raise MamfError("classify needs at least one label")
    if "{label}" not in template:
        raise MamfError(f"template {template!r} has no {{label}}")
    size = model.image_size
    pixels = []
    for image in images:
        if isinstance(image, (str, Path)):
            pixels.append(decode(Path(image), size))
        else:
            from PIL import Image

            arr = np.asarray(image, dtype=np.uint8)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise MamfError(f"an image array must be H x W x 3, got shape {arr.shape}")
            pixels.append(np.asarray(Image.fromarray(arr).resize((size, size), Image.BICUBIC)))
    if not pixels:
        return np.zeros((0, len(labels)), np.float32)
    model.eval()
    with torch.no_grad():
        x = model.preprocess(torch.from_numpy(np.stack(pixels)))
        img = torch.nn.functional.normalize(model.encode_images(x).float(), dim=-1)
        tokens = model.tokenize([template.format(label=label) for label in labels])
        txt = torch.nn.functional.normalize(model.encode_texts(tokens).float(), dim=-1)
        logits = model.logit_scale().float() * img @ txt.T
    return logits.softmax(dim=-1).cpu().numpy()


predict = classify
