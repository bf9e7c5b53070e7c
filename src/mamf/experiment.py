"""Grids of runs, dataset x seed x method (x task sampler) x task size, resumable, rows appended
as they finish.

An experiment file (YAML) names the model, methods, task samplers, seeds, shared settings,
per-method settings and datasets (a folder, or a builder that makes one). The samplers axis
applies to the methods that draw tasks; the others run once. Every finished (dataset, method,
sampler, ways, seed, split) row is appended to `results.jsonl` at once; a second invocation skips
what is there. All methods and samplers of one (dataset, ways, seed) meet the same test tasks, so
they compare pairwise; every row also carries each test task's prompt similarity under the
pretrained model (`task_similarity`), computed once per dataset before any training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mamf import adapters, distributed, samplers
from mamf import methods as registry
from mamf.config import AT_MOST, Config, build_config, check_seed, deep_merge, dump_yaml, load_yaml
from mamf.data.fewshot import is_fewshot
from mamf.data.splits import SPLITS
from mamf.errors import MamfError, shown
from mamf.io import append_jsonl, atomic_write_bytes, atomic_write_text, make_folder
from mamf.lock import exclusive
from mamf.metatest import WeightSnapshot
from mamf.results import read_rows, row_alpha, row_sampler
from mamf.run import RESULTS, apply_heads, evaluate_prepared, prepare, seed_everything, ways_list
from mamf.training import train
from mamf.trainlog import CSV_NAME
from mamf.wiseft import Interpolation, alphas, starting_weights

log = logging.getLogger(__name__)

TOP_KEYS = {"name", "model", "methods", "samplers", "seeds", "settings", "method_settings",
            "datasets", "device", "precision", "shots", "splits"}
DATASET_KEYS = {"root", "build", "build_options", "settings", "method_settings", "ways"}
# settings a method may change without invalidating a dataset's cached tower outputs
METHOD_SECTIONS = {"train", "metatest", "baseline"}
SAFE_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,64}")
# the model and its caches are prepared once per dataset: what they depend on is not per method
CACHE_KEYS = {"freeze_image_backbone", "freeze_text_tower", "unfreeze_image_blocks",
              "unfreeze_text_layers", "heads", "adapter", "lora_rank", "lora_alpha",
              "lora_dropout", "lora_targets"}
MAX_WAYS = AT_MOST["data.ways"]


@dataclass
class DatasetSpec:
    name: str
    root: str | None = None
    build: str | None = None
    build_options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    ways: object = None
    # per-method settings for this dataset only, over the experiment's (a learning rate chosen
    # on this dataset's dev split for one method)
    method_settings: dict = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    model: str
    methods: list[str]
    seeds: list[int]
    settings: dict
    method_settings: dict
    datasets: list[DatasetSpec]
    device: str = "auto"
    precision: str = "auto"
    source: Path | None = None
    samplers: list[str] | None = None  # the grid's sampler axis; None: train.sampler as set
    shots: list[int] | None = None  # the grid's shots axis (data.shots); None: as set
    splits: list[str] | None = None  # the meta-test's splits; None: metatest.split as set


def parse_experiment(raw: dict, source: Path | None = None) -> Experiment:
    """Validate an experiment mapping; every run's config is built once here to catch errors early.

    Every value is type-checked before use: a YAML alias can make a tiny file hold a structure
    whose `str()` never ends, so nothing from the file is printed or converted unchecked.
    """
    if not isinstance(raw, dict):
        raise MamfError("an experiment file must hold a mapping of keys")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise MamfError(f"unknown experiment key(s) {', '.join(map(shown, unknown[:3]))} "
                        f"(known: {', '.join(sorted(TOP_KEYS))})")
    known = registry.names()
    methods = raw.get("methods", [m for m in known if not registry.method_class(m).baseline])
    if not isinstance(methods, list) or not methods:
        raise MamfError(f"experiment 'methods' must be a non-empty list, got {shown(methods)}")
    bad = [m for m in methods if not isinstance(m, str) or m not in known]
    if bad:
        raise MamfError(f"unknown method(s) {', '.join(map(shown, bad[:3]))}: use "
                        f"{', '.join(known)}")
    _refuse_duplicates(methods, "experiment 'methods'")
    sampler_axis = raw.get("samplers")
    if sampler_axis is not None:
        if not isinstance(sampler_axis, list) or not sampler_axis:
            raise MamfError(f"experiment 'samplers' must be a non-empty list, got "
                            f"{shown(sampler_axis)}")
        unknown_samplers = [s for s in sampler_axis
                            if not isinstance(s, str) or s not in samplers.names()]
        if unknown_samplers:
            raise MamfError(f"unknown task sampler(s) {', '.join(map(shown, unknown_samplers[:3]))}"
                            f": use {', '.join(samplers.names())}")
        _refuse_duplicates(sampler_axis, "experiment 'samplers'")
    shots = _axis(raw, "shots", lambda k: _is_int(k) and 1 <= k <= AT_MOST["data.shots"],
                  "positive integers")
    splits = _axis(raw, "splits", lambda x: isinstance(x, str) and x in SPLITS, ", ".join(SPLITS))
    seeds = raw.get("seeds", [312])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) for s in seeds):
        raise MamfError(f"experiment 'seeds' must be a list of integers, got {shown(seeds)}")
    _refuse_duplicates(seeds, "experiment 'seeds'")
    for seed in seeds:
        check_seed("experiment 'seeds'", seed)
    method_settings = _method_settings(raw.get("method_settings"), "method_settings", known)
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, dict) or not datasets_raw:
        raise MamfError("experiment 'datasets' must map names to dataset entries")
    datasets = [_dataset(name, entry, source) for name, entry in datasets_raw.items()]
    exp = Experiment(_text(raw, "name", source.stem if source else "experiment"),
                     _text(raw, "model", "effnet-minilm"), methods, seeds,
                     _mapping(raw.get("settings"), "experiment 'settings'"), method_settings,
                     datasets, _text(raw, "device", "auto"), _text(raw, "precision", "auto"),
                     source, sampler_axis, shots, splits)
    for ds in datasets:
        for m in methods:
            for sampler in samplers_of(exp, ds, m):
                for split in exp.splits or [None]:
                    config = run_config(exp, ds, m, seeds[0], "/placeholder", sampler=sampler,
                                        split=split)
                    if shots and config.data.protocol == "paper":
                        raise MamfError(f"dataset {ds.name!r}: the 'shots' axis needs a protocol "
                                        "with set shots (episodic, coop, base2novel), not paper")
    return exp


def _dataset(name, entry, source: Path | None) -> DatasetSpec:
    """One entry of `datasets:`, checked: a folder or a builder, settings, task sizes."""
    if _is_int(name) and abs(name) < 10**9:
        name = str(name)
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise MamfError(f"dataset name {shown(name)} must be letters, digits, '-', '_' or '.' "
                        "(it names a folder inside --out)")
    entry = _mapping(entry, f"dataset {name!r}")
    if set(entry) - DATASET_KEYS:
        raise MamfError(f"dataset {name!r}: keys must be among {sorted(DATASET_KEYS)}")
    root, build = entry.get("root"), entry.get("build")
    for key, value in (("root", root), ("build", build)):
        if value is not None and not isinstance(value, str):
            raise MamfError(f"dataset {name!r}: {key!r} must be a string, got {shown(value)}")
    if bool(root) == bool(build):
        raise MamfError(f"dataset {name!r} needs exactly one of 'root' (a folder) or 'build'")
    if root and source is not None:
        root = str((source.parent / root).expanduser())
    options = _mapping(entry.get("build_options"), f"dataset {name!r}: 'build_options'")
    if options and not build:
        raise MamfError(f"dataset {name!r}: 'build_options' go with 'build'")
    if build:
        from mamf.data.builders import builder_options

        known = builder_options(build)
        unknown = [k for k in options if k not in known]
        if unknown:
            raise MamfError(f"dataset {name!r}: builder {build!r} has no option "
                            f"{shown(unknown[0])}; options: {', '.join(known) or 'none'}")
    return DatasetSpec(name, root, build, options,
                       _mapping(entry.get("settings"), f"dataset {name!r}: 'settings'"),
                       _ways(entry.get("ways"), name),
                       _method_settings(entry.get("method_settings"),
                                        f"datasets.{name}.method_settings", registry.names()))


def _axis(raw: dict, key: str, valid, expected: str) -> list | None:
    """A grid axis (`shots`, `splits`): absent (None), or a non-empty list of distinct values
    that `valid` accepts."""
    values = raw.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not values or not all(valid(v) for v in values):
        raise MamfError(f"experiment {key!r} must be a non-empty list of {expected}, got "
                        f"{shown(values)}")
    _refuse_duplicates(values, f"experiment {key!r}")
    return values


def _method_settings(raw, where: str, known) -> dict:
    """`method_settings` (of the experiment, or of one dataset): per-method train, metatest and
    baseline sections, which may not change what the dataset's prepared model depends on."""
    settings = _mapping(raw, f"experiment {where!r}")
    for m, s in settings.items():
        if m not in known:
            raise MamfError(f"{where} names unknown method {shown(m)}")
        s = _mapping(s, f"{where}.{m}")
        if set(s) - METHOD_SECTIONS:
            raise MamfError(f"{where}.{m} may only hold train, metatest and baseline sections")
        for section in s:
            _mapping(s[section], f"{where}.{m}.{section}")
        if CACHE_KEYS & set(s.get("train") or {}):
            raise MamfError(f"{where}.{m}.train cannot change {sorted(CACHE_KEYS)}: set "
                            "them in settings or per dataset")
    return settings


def _ways(value, name: str):
    """None (the config's data.ways), 'all', one size, or a list (or comma list) of sizes."""
    if value is None:
        return value
    if isinstance(value, str):
        if value.strip().lower() in ("all", "paper"):
            return value
        with contextlib.suppress(ValueError):  # a comma list; anything else is refused below
            value = [int(v) for v in value.split(",")]
    sizes = [value] if _is_int(value) else value
    if not isinstance(sizes, list) or not sizes or \
            not all(_is_int(n) and 2 <= n <= MAX_WAYS for n in sizes):
        raise MamfError(f"dataset {name!r}: 'ways' must be a task size (2 to {MAX_WAYS}), a list "
                        f"of them or 'all', got {shown(value)}")
    _refuse_duplicates(sizes, f"dataset {name!r}: 'ways'")
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mapping(value, what: str) -> dict:
    """A section of the file: a mapping, or nothing (empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MamfError(f"{what} must be a mapping of keys, got {shown(value)}")
    return value


def _text(raw: dict, key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise MamfError(f"experiment {key!r} must be a string, got {shown(value)}")
    return value


def _refuse_duplicates(items: list, what: str) -> None:
    """Two equal entries would run (and count) one row twice."""
    seen = []
    for item in items:
        if item in seen:
            raise MamfError(f"{what} lists {shown(item)} twice")
        seen.append(item)


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    return parse_experiment(load_yaml(path), path)


def run_config(exp: Experiment, ds: DatasetSpec, method: str, seed: int, root: str,
               ways: int | None = None, sampler: str | None = None,
               shots: int | None = None, split: str | None = None) -> Config:
    merged = deep_merge(exp.settings, ds.settings)
    merged = deep_merge(merged, exp.method_settings.get(method, {}))
    merged = deep_merge(merged, ds.method_settings.get(method, {}))
    merged = deep_merge(merged, {"model": exp.model, "seed": seed, "device": exp.device,
                             "precision": exp.precision, "data": {"root": root}})
    if registry.method_class(method).trains:
        merged = deep_merge(merged, {"train": {"method": method}})
    if ways is not None:
        merged = deep_merge(merged, {"data": {"ways": ways}})
    if sampler is not None:
        merged = deep_merge(merged, {"train": {"sampler": sampler}})
    if shots is not None:
        merged = deep_merge(merged, {"data": {"shots": shots}})
    if split is not None:
        merged = deep_merge(merged, {"metatest": {"split": split}})
    try:
        return build_config(merged)
    except MamfError as e:
        raise MamfError(f"dataset {ds.name!r}, method {method!r}: {e}") from None


def samplers_of(exp: Experiment, ds: DatasetSpec, method: str) -> list[str | None]:
    """The task samplers `method` runs with on `ds`: the grid's axis (or the configured
    `train.sampler`) for methods that draw tasks, [None] for the others."""
    if not registry.method_class(method).draws_tasks:
        return [None]
    if exp.samplers:
        return list(exp.samplers)
    return [run_config(exp, ds, method, exp.seeds[0], "/placeholder").train.sampler]


def row_key(row: dict, by_shots: bool = False) -> tuple:
    """A grid cell; `by_shots`: the grid has a shots axis, so the row's shots are part of it."""
    return (row.get("experiment_dataset", row["dataset"]), row["method"], row_sampler(row),
            row["ways"], row["seed"], row["split"], row_alpha(row),
            row["shots"] if by_shots else None)


def cells(exp: Experiment, ds: DatasetSpec, root: str, method: str, seed: int,
          sampler: str | None) -> list[tuple[str, float | None]]:
    """The (split, alpha) rows each task size of a method gets: the splits axis (or
    metatest.split) times its alphas (`mamf.wiseft.alphas`)."""
    out = []
    for split in exp.splits or [None]:
        config = run_config(exp, ds, method, seed, root, sampler=sampler, split=split)
        out += [(config.metatest.split, a) for a in alphas(config, method)]
    return out


def dataset_root(ds: DatasetSpec, out: Path, datasets: list[DatasetSpec] = ()) -> str:
    """The dataset's folder: its `root`, or `out/data/<name>` built there. Entries of `datasets`
    that build the same thing (builder and options) share the first one's folder, so a dataset
    studied under several settings (another training match, frozen or not) is built once."""
    if ds.root:
        return ds.root
    from mamf.data.builders import build

    same = [d for d in datasets if not d.root and d.build == ds.build and
            json.dumps(d.build_options, sort_keys=True) ==
            json.dumps(ds.build_options, sort_keys=True)]
    name = same[0].name if same else ds.name
    return str(build(ds.build, out / "data" / name, log=log.info, **ds.build_options))


def run_experiment(exp: Experiment, out: str | Path, progress: bool = True) -> list[dict]:
    """Run every missing row of the grid; returns all rows of `out/results.jsonl`.

    Under torchrun every rank runs the grid together (training data-parallel, test tasks
    sharded) and rank 0 alone writes, so the files are those of one process.
    """
    from mamf.inputs import resolve_device

    distributed.init(distributed.local_device(resolve_device(exp.device)))
    with distributed.main_only(exclusive(out)):
        return _run_experiment(exp, Path(out), progress and distributed.is_main())


def _run_experiment(exp: Experiment, out: Path, progress: bool, job: str | None = None) \
        -> list[dict]:
    """The grid's missing rows, in-process; `job`: only the unit `unit_id` names, its rows
    appended to its own `jobs/<id>/results.jsonl` (`mamf.launcher`), never to the shared file."""
    from tqdm import tqdm

    main = distributed.is_main()
    rows = distributed.from_main(read_rows(out / RESULTS) if distributed.is_main() else None)
    others = sorted({r["experiment"] for r in rows if r.get("experiment", exp.name) != exp.name})
    if others:
        raise MamfError(f"{out} holds results of another experiment ({', '.join(others)}): "
                        "choose another --out")
    if exp.source is not None and job is None:
        text = exp.source.read_bytes()
        previous = out / "experiment.yaml"
        if rows and previous.is_file() and previous.read_bytes() != text:
            log.warning("the experiment file changed since %s was started; finished rows are "
                        "kept, missing ones are computed with the new settings", out)
        if main:
            atomic_write_bytes(previous, text)
    done = {row_key(r, bool(exp.shots)) for r in rows}
    plans, skipped = plan(exp, out, done)
    results = out / RESULTS
    if job is not None:  # the unit as the launcher planned it; rows it wrote before are done
        results = job_results(out, job)
        plans = [(*p[:5], u, *p[6:]) for p in plans for u in units_of(p)
                 if unit_id(p, u) == job]
        if not plans:
            raise MamfError(f"job {job}: no such unit left in the grid of {out}")
        done |= {row_key(r, bool(exp.shots)) for r in read_rows(results)}
    total = sum(len(p[7]) for p in plans)
    if total == 0 and skipped:
        log.warning("nothing computed: dataset(s) %s skipped (see above); the rest of the grid "
                    "is in %s", ", ".join(skipped), results)
        return rows
    if total == 0:
        log.info("nothing to do: every row of the grid is in %s", results)
        return rows
    log.info("%d row(s) to compute (%d already done)", total, len(done))
    bar = tqdm(total=total, desc=f"experiment {exp.name}", unit="row",
               disable=None if progress else True)
    clock = _Clock(total)
    prepared: dict[str, tuple] = {}
    for ds, root, seed, method, sampler, todo, ways, missing, shots in plans:
        key = ds.name
        if key not in prepared:
            prepared.clear()  # one dataset's model and caches in memory at a time
            try:
                config = run_config(exp, ds, method, seed, root)
                with clock.apart() as one_off:
                    model, dataset, inputs = prepare(config)
                    # every class's prompt under the pretrained model, before any training
                    pretrained_prompts = samplers.prompt_embeddings(
                        model, inputs, np.arange(len(dataset.classes)))
                log.info("%s: model and caches ready in %.1f s (once; not counted in the time "
                         "left)", ds.name, one_off())
                prepared[key] = (model, dataset, inputs, WeightSnapshot(model),
                                 pretrained_prompts)
            except MamfError as e:
                log.error("dataset %s skipped: %s", ds.name, e)
                _failure(out, {"dataset": ds.name, "error": str(e)})
                bar.update(len(missing))
                continue
        model, dataset, inputs, pretrained, prompts = prepared[key]
        units = units_of((ds, root, seed, method, sampler, todo, ways, missing, shots))
        name = method if sampler is None else f"{method} ({sampler})"
        for unit in units:
            left = sum(1 for n, _, _ in missing if n in unit)
            try:
                for row in _run_unit(exp, ds, root, seed, method, sampler, unit, ways, model,
                                     dataset, inputs, pretrained, prompts, results, progress,
                                     done, shots):
                    left -= 1
                    bar.update(1)
                    if main:
                        at = (f" {row['split']}" if exp.splits else "") + \
                            ("" if row["alpha"] is None else f" alpha {row['alpha']}")
                        log.info("%s %s %s-way seed %d%s: %.3f ± %.3f  [%s]", ds.name,
                                 name, row["ways"], seed, at, row["acc_mean"],
                                 row["acc_ci95"], clock.tick())
            except MamfError as e:
                log.error("%s %s seed %d ways %s failed: %s", ds.name, name, seed, unit, e)
                _failure(out, {"dataset": ds.name, "method": method, "sampler": sampler,
                               "seed": seed, "ways": unit, "error": str(e)})
            except Exception as e:  # a bug must not stop the grid; it is recorded in full
                if distributed.world_size() > 1:
                    raise  # one rank's crash: the ranks are out of step, so the job stops
                log.error("%s %s seed %d ways %s crashed: %s", ds.name, name, seed, unit, e)
                _failure(out, {"dataset": ds.name, "method": method, "sampler": sampler,
                               "seed": seed, "ways": unit, "error": repr(e),
                               "traceback": traceback.format_exc()})
            bar.update(left)  # rows a failure left undone
    bar.close()
    return distributed.from_main(read_rows(results) if main else None)


def plan(exp: Experiment, out: Path, done: set) -> tuple[list[tuple], list[str]]:
    """(dataset, root, seed, method, sampler, sizes to do, all sizes, missing cells, shots) of
    every method run with rows not in `done`, building datasets that are not yet built; and the
    names of the datasets skipped (they could not be built or read)."""
    plans, skipped = [], []
    for ds in exp.datasets:
        try:
            with distributed.main_first():
                root = dataset_root(ds, out, exp.datasets)
            from mamf.data.folder import scan_folder

            base = run_config(exp, ds, exp.methods[0], exp.seeds[0], root)
            n_classes = len(scan_folder(root, base.data.subdataset).classes)
            ways = ways_list(base, n_classes, ds.ways)
        except MamfError as e:
            log.error("dataset %s skipped: %s", ds.name, e)
            _failure(out, {"dataset": ds.name, "error": str(e)})
            skipped.append(ds.name)
            continue
        for shots in exp.shots or [None]:
            for seed in exp.seeds:
                for method in exp.methods:
                    for sampler in samplers_of(exp, ds, method):
                        missing = [(n, split, alpha) for n in ways
                                   for split, alpha in cells(exp, ds, root, method, seed, sampler)
                                   if (ds.name, method, sampler, n, seed, split, alpha, shots)
                                   not in done]
                        todo = sorted({n for n, _, _ in missing}, key=ways.index)
                        if todo:
                            plans.append((ds, root, seed, method, sampler, todo, ways, missing,
                                          shots))
    return plans, skipped


def units_of(p: tuple) -> list[list[int]]:
    """A plan's units, each one training: per task size, or once for all its sizes."""
    todo = p[5]
    return [[n] for n in todo] if registry.method_class(p[3]).trains_per_ways else [todo]


def unit_id(p: tuple, unit: list[int]) -> str:
    """A unit's name, the same in the launcher and in its job: what it trains and for whom."""
    ds, _, seed, method, sampler = p[:5]
    what = json.dumps([ds.name, seed, method, sampler, p[8], unit])
    return f"{ds.name}-{method}-s{seed}-" + hashlib.sha256(what.encode()).hexdigest()[:10]


def job_results(out: Path, job: str) -> Path:
    return out / "jobs" / job / RESULTS


class _Clock:
    """Rows done of the total and the estimated time left, for log lines. One-off costs (loading
    the model, building the image and frozen-feature caches) are timed apart and left out of the
    rate: a first row that built the caches would otherwise be extrapolated to every row."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.one_off = total, 0, time.perf_counter(), 0.0

    @contextlib.contextmanager
    def apart(self):
        """Time the block apart; yields a function that gives its seconds so far."""
        started = time.perf_counter()
        try:
            yield lambda: time.perf_counter() - started
        finally:
            self.one_off += time.perf_counter() - started

    def tick(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start - self.one_off
        left = elapsed / self.done * (self.total - self.done)
        return f"{self.done}/{self.total}, about {left / 60:.1f} min left"


def _run_unit(exp, ds, root, seed, method, sampler, unit, ways, model, dataset, inputs,
              pretrained, prompts, results, progress, done=frozenset(), shots=None):
    """Train once (per task size for task-based methods), then meta-test every size in `unit`
    on each (split, alpha) not in `done`; `shots`: the grid's shots axis value, if it has one.

    A method trained once for every size trains exactly as in an uninterrupted grid (with the
    first of the dataset's sizes, `ways[0]`), however many of its rows are already done, and
    random heads and adapters are drawn from the unit's seed: a resumed grid writes the rows of
    a whole one. `prompts`: the dataset's prompt embeddings under the pretrained model
    (`task_similarity`). WiSE-FT's zero-shot weights are the model as this unit's training starts.
    """
    pretrained.restore()
    kind = registry.method_class(method)
    config = run_config(exp, ds, method, seed, root, sampler=sampler, shots=shots)
    if not is_fewshot(config.data.protocol):  # all-way protocols train with data.ways as set
        config = run_config(exp, ds, method, seed, root, sampler=sampler, shots=shots,
                            ways=unit[0] if kind.trains_per_ways else ways[0])
    seed_everything(seed)
    inputs.generator.manual_seed(seed)
    train_info = {}
    mix = None
    if kind.trains:
        apply_heads(model, config)
        if adapters.enabled(config.train):
            adapters.initialise(model, seed)
        mixes = any(a is not None for _, a in cells(exp, ds, root, method, seed, sampler))
        start = starting_weights(model) if mixes else None
        started = time.perf_counter()
        logs = train_log_folder(results.parent, ds.name, method, sampler, seed, shots,
                                unit[0] if kind.trains_per_ways else None)
        result = train(model, inputs, dataset, config, progress,
                       log_folder=logs if distributed.is_main() else None)
        train_info = {"train_log": str((logs / CSV_NAME).relative_to(results.parent)),
                      "train_steps": result.steps,
                      "train_time_s": round(time.perf_counter() - started, 3),
                      "train_loss_first": result.losses[0], "train_loss_last": result.losses[-1]}
        mix = Interpolation(model, start) if start is not None else None
    for n in unit:
        for split, alpha in cells(exp, ds, root, method, seed, sampler):
            if (ds.name, method, sampler, n, seed, split, alpha, shots) in done:
                continue
            config = run_config(exp, ds, method, seed, root, ways=n, sampler=sampler,
                                shots=shots, split=split)
            if alpha is not None and mix is None:  # interpolate set per split or method
                raise MamfError(f"metatest.interpolate of {method} must be set for every split")
            with mix.at(alpha) if mix else contextlib.nullcontext():
                row = evaluate_prepared(model, dataset, inputs, config, method, n, progress,
                                        prompts, alpha=alpha)
            row.update(train_info)
            row.update({"experiment": exp.name, "experiment_dataset": ds.name})
            if distributed.is_main():
                config_file = results.parent / "configs" / f"{row['config_id']}.yaml"
                if not config_file.exists():
                    atomic_write_text(config_file, dump_yaml(config))
                append_jsonl(results, row)
            yield row


def train_log_folder(out: Path, dataset: str, method: str, sampler: str | None, seed: int,
                     shots: int | None, ways: int | None) -> Path:
    """Where one training's log goes (`train_logs/...`, one folder per training, so jobs of one
    grid never share a file); its rows name it (`train_log`, relative to the results folder).
    `ways`: the task size of a method that trains per size, None for one trained once for all
    (the name never depends on which rows were left to compute)."""
    parts = [dataset, method, sampler, f"s{seed}", None if shots is None else f"{shots}shot",
             None if ways is None else f"n{ways}"]
    name = "_".join(safe_part(p) for p in parts if p is not None)
    folder = out / "train_logs" / name
    make_folder(folder)
    return folder


def safe_part(text: object) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in str(text))


def _failure(out: Path, record: dict) -> None:
    if distributed.is_main():
        append_jsonl(out / "failures.jsonl", {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record})
