"""The Python API: what the `mamf` command does, callable from a script or a notebook.

    from mamf import make_config, train, evaluate, report, classify
    config = make_config({"data": {"root": "data/emoji"}, "train": {"steps": 20}})
    run = train(config, "runs/emoji")          # a Run: folder, config, model, summary
    rows = evaluate(run, "results", ways=[5])
    probs = classify(run, ["a.png"], ["cat", "dog"])  # with the run's prompts
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

from mamf import plugins  # noqa: F401  (every plug-in joins the catalogue before a config is built)
from mamf.catalogue import Config
from mamf.config import build_config, load_yaml, to_dict
from mamf.system.errors import MamfError, shown

log = logging.getLogger("mamf")

if TYPE_CHECKING:
    import numpy as np

    from mamf.models.base import DualEncoder
    from mamf.results import Row


PRESETS = ("cpu", "clip-lora", "official-baselines")  # shipped: src/mamf/configs/<name>.yaml


def preset(name: str) -> dict:
    """A shipped preset's settings, as `--preset NAME` reads them.

    Args:
        name: one of `PRESETS` (`cpu`, `clip-lora`, `official-baselines`).

    Returns:
        The preset's nested settings (a dict to give `make_config`).

    Example:
        >>> preset("cpu")["model"]
        'effnet-minilm'
    """
    from importlib.resources import files

    if name not in PRESETS:
        raise MamfError(f"unknown preset {name!r}: use {', '.join(PRESETS)}")
    return load_yaml(Path(str(files("mamf") / "configs" / f"{name}.yaml")))


def settings_file(path: str | Path) -> dict:
    """A YAML settings file, or a shipped preset by name (`cpu`) when no such file exists.

    Args:
        path: a YAML file's path, or a preset's name.

    Returns:
        The nested settings it holds.

    Example:
        >>> settings_file("cpu") == preset("cpu")  # no file named cpu here
        True
    """
    if str(path) in PRESETS and not Path(path).exists():
        return preset(str(path))
    return load_yaml(path)


def make_config(settings: dict | str | Path | Config | None = None,
                overrides: dict | None = None, **dotted) -> Config:
    """A validated Config: the defaults, then `settings`, then `overrides`, then `dotted`.

    Args:
        settings: a nested dict, a YAML file's path, a shipped preset's name (`"cpu"`) or a
            Config; None: the defaults alone.
        overrides: dotted keys and values, `{"train.lr": 1e-5}`.
        **dotted: the same as keywords, `.` written as `__` (`train__lr=1e-5`).

    Returns:
        The Config (every value checked; a bad one is one `MamfError` line).

    Example:
        >>> config = make_config("cpu", data__root="data/emoji", train__steps=20)
        >>> config.train.steps
        20
    """
    if settings is not None:
        _need(settings, (dict, str, Path, Config), "settings")
    if overrides is not None:
        _need(overrides, dict, "overrides")
    if isinstance(settings, Config):
        settings = to_dict(settings)
    elif isinstance(settings, (str, Path)):
        settings = settings_file(settings)
    return build_config(settings, {**(overrides or {}),
                                   **{k.replace("__", "."): v for k, v in dotted.items()}})


@contextlib.contextmanager
def _bars(progress: bool) -> Iterator[None]:
    """`progress=False` silences every bar of the call, a cache build's included."""
    from mamf.system import progress as bars

    before = bars.is_quiet()
    bars.set_quiet(before or not progress)
    try:
        yield
    finally:
        bars.set_quiet(before)


class Run:
    """A trained run: its `folder`, its `config` and its `model` (the trained weights, loaded
    from the folder on first use), and train.json's `summary` (also as `run["steps"]`).

    `evaluate(run, ...)` scores the model in memory, `classify(run, ...)` with the run's
    prompts. A model changed in memory after it was loaded is scored as an in-memory model,
    not under the run's name.

    Args:
        folder: the run folder (`train`'s `out`).
        config: the run's Config; None reads it, and the weights, from the folder.
        summary: train.json's summary; None reads it from the folder (empty without one).

    Example:
        >>> run = Run("runs/emoji")        # a finished run, opened again
        >>> run["steps"], run.config.train.method
        (20, 'mamf')
    """

    def __init__(self, folder: str | Path, config: Config | None = None,
                 summary: dict | None = None):
        from mamf.runs.run_folder import load_run as load
        from mamf.runs.run_folder import read_summary

        self.folder = Path(folder)
        if config is None:
            config, self._model = load(self.folder)
            self._digest = _weights_digest(self._model)
        else:
            self._model, self._digest = None, None
        self.config = config
        self.summary = summary if summary is not None else (
            read_summary(self.folder / "train.json") if (self.folder / "train.json").is_file()
            else {})

    @property
    def model(self) -> DualEncoder:
        if self._model is None:
            from mamf.runs.run_folder import load_run as load

            self._model = load(self.folder)[1]
            self._digest = _weights_digest(self._model)
        return self._model

    def unchanged(self) -> bool:
        """Whether the model, where loaded, still holds the folder's weights."""
        return self._model is None or _weights_digest(self._model) == self._digest

    def __getitem__(self, key: str):
        return self.summary[key]

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r}, method={self.config.train.method!r})"


def _weights_digest(model: DualEncoder) -> str:
    from mamf.models.base import parameters_digest

    return parameters_digest(p for _, p in sorted(model.state_dict().items()))


def _need(value, types, what: str) -> None:
    """A wrong type is one error line naming the argument, not a traceback further in."""
    if not isinstance(value, types) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise MamfError(f"{what} must be {names}, got {type(value).__name__}")


def train(config: Config | dict | str | Path, out: str | Path, progress: bool = True) -> Run:
    """Train `config.train.method` into the run folder `out` (weights, config.yaml, train.json,
    the training log), as `mamf train` does.

    Args:
        config: a Config, or what `make_config` takes (a nested dict, a YAML path, a preset).
        out: the run folder to write.
        progress: False silences the progress bars.

    Returns:
        The Run: its folder, config, trained model and train.json's summary
        (`run["steps"]`).

    Example:
        >>> config = make_config("cpu", data__root="data/emoji", train__steps=20)
        >>> run = train(config, "runs/emoji")
        >>> run["steps"]
        20
    """
    from mamf.runs.run_folder import train_run

    _need(out, (str, Path), "out")
    config = make_config(config)
    with _bars(progress):
        summary = train_run(config, Path(out), progress=progress)
    return Run(out, config, summary)


def load_run(run: str | Path) -> tuple[Config, DualEncoder]:
    """A finished run's config and its model with the trained weights.

    Args:
        run: the run folder.

    Returns:
        (config, model); `Run(folder)` gives both with train.json's summary.

    Example:
        >>> config, model = load_run("runs/emoji")
    """
    from mamf.runs.run_folder import load_run as load

    _need(run, (str, Path), "run")
    return load(Path(run))


def evaluate(source: Config | dict | str | Path | Run | DualEncoder, out: str | Path, *,
             method: str | None = None, ways: int | str | Sequence[int] | None = None,
             progress: bool = True, settings: dict | None = None, overrides: dict | None = None,
             config: Config | dict | str | Path | None = None) -> list[Row]:
    """Meta-test a trained run, a model in memory or a model zero-shot, as `mamf evaluate` does.

    Args:
        source: a run folder or the Run `train` returned; a model in memory (with `config`);
            or a Config, dict or YAML path (the pretrained model, zero-shot or with a
            test-time method).
        out: the results folder; rows are appended to out/results.jsonl (a row already there
            is not computed again).
        method: a test-time method (`mamf.methods.names(trained=False)`); default: the run's
            own, or zeroshot without a run.
        ways: task size n, a list of them, or 'all'; default: the config's `data.ways`.
        progress: False silences the progress bars.
        settings: with a run, nested settings over its config.
        overrides: dotted settings over the config (`{"metatest.lr": 1e-3}`).
        config: with a model in memory, the Config that says its data and settings.

    Returns:
        The rows, as `mamf.results.Row`s. A model in memory is not changed; its rows' `run`
        names its weights' hash (`memory:<hash>`), so no row of another model is taken for its
        own.

    Example:
        >>> rows = evaluate("runs/emoji", "results", ways=[2, 5])
        >>> [(r.ways, round(r.acc_mean, 3)) for r in rows]
        [(2, 0.81), (5, 0.6)]
        >>> evaluate(config, "results", method="tip-adapter", ways=5)  # no training
    """
    from mamf.config import deep_merge
    from mamf.data.dataset import class_count
    from mamf.methods import names
    from mamf.models.base import DualEncoder
    from mamf.runs.measure import evaluate as meta_test
    from mamf.runs.ways import ways_list

    _need(out, (str, Path), "out")
    for value, what in ((method, "method"), (settings, "settings"), (overrides, "overrides")):
        if value is not None:
            _need(value, str if what == "method" else dict, what)
    if ways is not None and not isinstance(ways, (int, str, list, tuple)) or \
            isinstance(ways, bool):
        raise MamfError(f"ways must be an int, a list of ints or 'all', got {type(ways).__name__}")
    model, run_dir, trained_by, memory = None, None, None, None
    test_time = names(trained=False)
    if method is not None and method not in names():
        raise MamfError(f"unknown method {method!r}; choose from {', '.join(names())}")
    if isinstance(source, Run) and not source.unchanged():
        source, config = source.model, config or source.config
    if isinstance(source, DualEncoder):
        if config is None:
            raise MamfError("evaluate(model, ...) needs config= (its data and settings)")
        import copy

        memory = f"memory:{_weights_digest(source)[:12]}"
        model = copy.deepcopy(source)  # the meta-test adapts and restores its own copy
        source = config
    elif config is not None:
        raise MamfError("config= goes with a model in memory; a run or a config is the source")
    if isinstance(source, Run) or (isinstance(source, (str, Path)) and Path(source).is_dir()):
        run = source if isinstance(source, Run) else None
        run_dir = run.folder if run else Path(source)
        run_config, model = (run.config, run.model) if run else load_run(run_dir)
        trained_by = run_config.train.method
        config = make_config(deep_merge(to_dict(run_config), settings or {}), overrides)
        if config.model != run_config.model:
            raise MamfError("a trained run's model cannot be changed at evaluation")
        _refuse_training_changes(run_dir, run_config, config)
        if method and method not in test_time and method != trained_by:
            raise MamfError(f"--method {method} trains: evaluate a run it trained with --run, "
                            f"or pick a test-time method ({', '.join(test_time)})")
        method = method or trained_by
        if run is not None:
            import copy

            model = copy.deepcopy(model)  # the Run's own model stays as it was
    else:
        if not isinstance(source, (Config, dict, str, Path)):
            raise MamfError("evaluate's source must be a run folder, a Run, a model (with "
                            f"config=), a Config, a dict or a YAML path; got "
                            f"{type(source).__name__}")
        config = make_config(source, overrides)
        if method and method not in test_time and memory is None:
            raise MamfError(f"--method {method} trains: evaluate a run it trained with --run, "
                            f"or pick a test-time method ({', '.join(test_time)})")
        method = method or test_time[0]
    if not config.data.root:
        raise MamfError("no data folder given: set data.root (--data DIR)")
    n_classes = class_count(config.data.root, config.data.subdataset)
    sizes = ways_list(config, n_classes, list(ways) if isinstance(ways, (list, tuple)) else ways)
    with _bars(progress):
        return meta_test(config, Path(out), method, model, sizes, run_dir or memory,
                         progress=progress, trained_by=trained_by)


def _refuse_training_changes(run_dir: Path, trained: Config, asked: Config) -> None:
    """A trained run's training settings (train.*, and its method's own training rate) are
    what trained it: changed at evaluation they would train nothing, yet its rows and the
    report's Setup would show them as the run's."""
    from mamf.catalogue import value_of
    from mamf.methods import method_class

    keys = [f"train.{k}" for k in to_dict(trained)["train"]]
    rate = method_class(trained.train.method).presentation.train_rate
    keys += [rate] if rate and rate not in keys else []
    for key in keys:
        was, now = value_of(trained, key), value_of(asked, key)
        if was != now:
            raise MamfError(f"{key} cannot change at evaluation: {run_dir} was trained with "
                            f"{shown(was)}, not {shown(now)} (train another run to change it)")


def report(folder: str | Path, title: str | None = None, reference: str | None = None) -> dict:
    """Write the report of a results folder (report.md, report.html, figures/, tables/), as
    `mamf report` does; it reads the rows and the files beside them, and loads no torch.

    Args:
        folder: a folder holding results.jsonl; the report is written into it.
        title: the report's title; default: the folder's name.
        reference: the method every other is paired against; default: classical FT where it
            ran, else zero-shot.

    Returns:
        What was written, by name -> path: `"md"`, `"html"` and each figure (`"summary"`,
        ...); tables/ beside them.

    Example:
        >>> files = report("results")
        >>> files["md"]
        PosixPath('results/report.md')
    """
    from mamf.report import write_report
    from mamf.results import read_rows

    _need(folder, (str, Path), "folder")
    folder = Path(folder)
    if not (folder / "results.jsonl").is_file():
        raise MamfError(f"{folder} holds no results.jsonl")
    rows = read_rows(folder / "results.jsonl")
    if not rows:
        raise MamfError(f"no results rows in {folder}")
    return write_report(rows, folder, title or folder.name, reference)


def classify(model: DualEncoder | Run | str | Path, images: Sequence, labels: Sequence[str],
             template: str | None = None) -> np.ndarray:
    """Zero-shot scores of `images` against the prompts of `labels` (a softmax of the logit
    scale times the cosines).

    Args:
        model: a run folder, a Run or a model (`load_run`'s).
        images: paths, PIL images, or H x W x 3 (or H x W) arrays of uint8 0..255 or floats in
            [0, 1]; each is resized and centre-cropped as mamf's image cache does.
        labels: the class names.
        template: a prompt template with {label}; default: a run's own prompts (its data
            folder's `label_to_text.json` where it names every label, else its template or
            ensemble), else "A photo of a {label}.".

    Returns:
        Probabilities, float32, one row per image and one column per label.

    Example:
        >>> probs = classify("runs/emoji", ["a.png", "b.png"], ["red heart", "rocket"])
        >>> probs.shape
        (2, 2)
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mamf.methods import EXTENSION
    from mamf.models.base import DualEncoder

    run_config = None
    if isinstance(model, Run):
        run_config, model = model.config, model.model
    elif isinstance(model, (str, Path)):
        run_config, model = load_run(model)
    elif not isinstance(model, DualEncoder):
        raise MamfError("classify's model must be a run folder, a Run or a model from load_run, "
                        f"got {type(model).__name__}")
    extension = getattr(model, EXTENSION, None)
    if extension is not None:
        raise MamfError(f"this model's method learned a part outside the model's towers "
                        f"({type(extension).__name__}) that classify's prompts cannot use: score "
                        "it with mamf evaluate --run")
    for value, what in ((images, "images"), (labels, "labels")):
        if isinstance(value, (str, bytes, Path)) or not hasattr(value, "__len__"):
            raise MamfError(f"{what} must be a list, got {type(value).__name__}")
    if not labels:
        raise MamfError("classify needs at least one label")
    if not all(isinstance(x, str) and x.strip() for x in labels):
        raise MamfError("labels must be non-empty strings")
    if template is not None:
        _need(template, str, "template")
    prompts = _class_prompts(list(labels), template, run_config)
    pixels = [_pixels(image, model.image_size) for image in images]
    if not pixels:
        return np.zeros((0, len(labels)), np.float32)
    model.eval()
    with torch.no_grad():
        x = model.preprocess(torch.from_numpy(np.stack(pixels)))
        img = F.normalize(model.encode_images(x).float(), dim=-1)
        flat = [p for group in prompts for p in group]
        txt = F.normalize(model.encode_texts(model.tokenize(flat)).float(), dim=-1)
        groups = torch.split(txt, [len(group) for group in prompts])
        txt = F.normalize(torch.stack([g.mean(dim=0) for g in groups]), dim=-1)
        logits = model.logit_scale().float() * img @ txt.T
    return logits.softmax(dim=-1).cpu().numpy()


def _class_prompts(labels: list[str], template: str | None,
                   run_config: Config | None) -> list[list[str]]:
    """Each label's prompts (several for a template ensemble), as the run made its own."""
    from mamf.data.prompts import (
        DEFAULT_TEMPLATE,
        _from_json,
        _from_template,
        prompt_file,
        resolve_templates,
    )

    if template is not None or run_config is None:
        return [[p] for p in _from_template(template or DEFAULT_TEMPLATE, labels)]
    data = run_config.data
    root = Path(data.root).expanduser() if data.root else None
    if root is not None and root.is_dir():
        found = prompt_file(root / data.subdataset if data.subdataset else root,
                            root if data.subdataset else None)
        if found is not None:
            try:
                return [[p] for p in _from_json(found, labels)]
            except MamfError:
                log.info("%s does not name every label: the run's template gives the prompts",
                         found)
    templates = resolve_templates(data.templates)
    if templates:
        per_template = [_from_template(t, labels) for t in templates]
        return [list(group) for group in zip(*per_template)]
    return [[p] for p in _from_template(data.template, labels)]


def _pixels(image, size: int):
    """One image as uint8 size x size x 3, cropped as the image cache crops."""
    import numpy as np
    from PIL import Image, ImageOps

    from mamf.data.cache import UNREADABLE, decode, fit, to_rgb

    if isinstance(image, (str, Path)):
        try:
            return decode(Path(image), size)
        except UNREADABLE as e:
            raise MamfError(f"cannot read image {image}: {type(e).__name__}: {e}") from None
    if isinstance(image, Image.Image):
        return fit(to_rgb(ImageOps.exif_transpose(image)), size)
    try:
        arr = np.asarray(image)
    except (TypeError, ValueError, RuntimeError) as e:
        raise MamfError(f"an image must be a path, a PIL image or an array: {e}") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise MamfError(f"an image array must be H x W x 3 or H x W, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise MamfError("a float image array must hold values in [0, 1] (got "
                            f"{np.nanmin(arr):.3g} to {np.nanmax(arr):.3g}): give floats in "
                            "[0, 1] or uint8 0..255")
        arr = np.rint(arr * 255)
    elif arr.dtype.kind in "iu":
        if arr.min() < 0 or arr.max() > 255:
            raise MamfError(f"an integer image array must hold 0..255 (got {arr.min()} to "
                            f"{arr.max()})")
    else:
        raise MamfError(f"an image array must hold numbers, got dtype {arr.dtype}")
    return fit(Image.fromarray(arr.astype(np.uint8)), size)


predict = classify
