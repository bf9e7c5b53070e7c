"""The experiment file: a grid of runs, dataset x seed x method (x task sampler) x task size
(x shots x split), read from YAML and checked before anything runs (`mamf.runs.experiment` runs it).

An experiment file names the model, methods, task samplers, seeds, shared settings, per-method
settings and datasets (a folder, or a builder that makes one). The samplers axis applies to the
methods that draw tasks; the others run once. `run_config` is the settings of one run of the grid.

Checking a file against the methods and samplers needs the plug-ins, and so torch: this module
imports them only where it checks or builds (`parse_experiment`, `run_config`). A report reads
the file beside its rows with `declared_datasets`, which checks the entries without them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mamf import methods as registry
from mamf import protocols
from mamf.catalogue import AT_MOST, Config, check_seed
from mamf.config import build_config, deep_merge, load_yaml
from mamf.data.splits import SPLITS
from mamf.runs.hypotheses import Hypothesis, parse_hypotheses
from mamf.runs.tune_spec import (
    TuneSpec,
    check_symmetric,
    nested,
    parse_dataset_grids,
    parse_tune,
)
from mamf.system.errors import MamfError, is_int, shown

log = logging.getLogger(__name__)

TOP_KEYS = {"name", "model", "methods", "samplers", "seeds", "settings", "method_settings",
            "datasets", "device", "precision", "shots", "splits", "tune", "hypotheses"}
DATASET_KEYS = {"root", "build", "build_options", "settings", "method_settings", "ways",
                "methods", "tune", "shots", "runs_of"}
# settings a method may change without invalidating a dataset's cached tower outputs
METHOD_SECTIONS = {"train", "metatest", "baseline"}
SAFE_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,64}")
# the model and its caches are prepared once per dataset: what they depend on is not per method
CACHE_KEYS = {"freeze_image_backbone", "freeze_text_tower", "unfreeze_image_blocks",
              "unfreeze_text_layers", "heads", "adapter", "lora_rank", "lora_alpha",
              "lora_dropout", "lora_targets"}
MAX_WAYS = AT_MOST["data.ways"]
# an experiment compares methods, so by default they train on equal budgets (docs/method.md,
# "Budgets"); `train.budget: native` in its settings gives each method its own schedule
EXPERIMENT_DEFAULTS = {"train": {"budget": "matched"}}


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
    # the experiment's methods this dataset runs (None: all): a second entry of one dataset
    # under other settings (MAMF's sequential schedule) need not repeat every method
    methods: list[str] | None = None
    # this dataset's own tuning grids (`grid`, `method_grid`) over the experiment's `tune:`: a
    # capacity that trains more values wants lower rates than the head alone
    tune: dict | None = None
    # this dataset's own shots axis, over the experiment's (base-to-novel's K = 16 beside the
    # few-shot table's 1..16)
    shots: list[int] | None = None
    # a test-only dataset that scores another entry's runs (ImageNet's, on its variants): it
    # trains nothing; each method run of that entry is scored here too, with its weights
    runs_of: str | None = None


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
    tune: TuneSpec | None = None  # rates chosen on dev tasks first (`mamf.runs.tune`)
    tuned: dict = field(default_factory=dict)  # (dataset, method) -> what tuning chose
    # the comparisons the study is for, declared before it runs (`mamf.runs.hypotheses`)
    hypotheses: list[Hypothesis] = field(default_factory=list)


def parse_experiment(raw: dict, source: Path | None = None, strict: bool = True) -> Experiment:
    """Validate an experiment mapping; every run's config is built once here to catch errors early.
    `strict`: refuse asymmetric tuning (`tune_spec.check_symmetric`); False reads a file kept
    beside rows computed before that rule, to report them.

    Every value is type-checked before use: a YAML alias can make a tiny file hold a structure
    whose `str()` never ends, so nothing from the file is printed or converted unchecked.
    """
    from mamf.tasks import samplers

    _plugins()
    if not isinstance(raw, dict):
        raise MamfError("an experiment file must hold a mapping of keys")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise MamfError(f"unknown experiment key(s) {', '.join(map(shown, unknown[:3]))} "
                        f"(known: {', '.join(sorted(TOP_KEYS))})")
    known = registry.names()
    methods = raw.get("methods", [m for m in known
                                  if not registry.method_class(m).only_when_named])
    if not isinstance(methods, list) or not methods:
        raise MamfError(f"experiment 'methods' must be a non-empty list, got {shown(methods)}")
    bad = [m for m in methods if not isinstance(m, str) or m not in known]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise MamfError(f"unknown method {shown(bad[0])}{more}: use {', '.join(known)}")
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
    shots = _axis(raw, "shots", lambda k: is_int(k) and 1 <= k <= AT_MOST["data.shots"],
                  "positive integers")
    splits = _axis(raw, "splits", lambda x: isinstance(x, str) and x in SPLITS, ", ".join(SPLITS))
    seeds = raw.get("seeds", [312])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(is_int(s) for s in seeds):
        raise MamfError(f"experiment 'seeds' must be a list of integers, got {shown(seeds)}")
    _refuse_duplicates(seeds, "experiment 'seeds'")
    for seed in seeds:
        check_seed("experiment 'seeds'", seed)
    method_settings = _method_settings(raw.get("method_settings"), "method_settings", known)
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, dict) or not datasets_raw:
        raise MamfError("experiment 'datasets' must map names to dataset entries")
    datasets = [_dataset(name, entry, source, known) for name, entry in datasets_raw.items()]
    names = {ds.name: ds for ds in datasets}
    for ds in datasets:
        if ds.runs_of is not None and (ds.runs_of not in names or names[ds.runs_of].runs_of):
            raise MamfError(f"dataset {ds.name!r}: 'runs_of' must name a dataset entry that "
                            f"trains (one of {', '.join(n for n in names if not names[n].runs_of)}"
                            f"), got {shown(ds.runs_of)}")
    for ds in datasets:
        if ds.methods is not None and (not isinstance(ds.methods, list) or not ds.methods or
                                       any(m not in methods for m in ds.methods)):
            raise MamfError(f"dataset {ds.name!r}: 'methods' must list methods of the "
                            f"experiment, got {shown(ds.methods)}")
    exp = Experiment(_text(raw, "name", source.stem if source else "experiment"),
                     _text(raw, "model", "effnet-minilm"), methods, seeds,
                     _mapping(raw.get("settings"), "experiment 'settings'"), method_settings,
                     datasets, _text(raw, "device", "auto"), _text(raw, "precision", "auto"),
                     source, sampler_axis, shots, splits)
    exp.hypotheses = parse_hypotheses(raw.get("hypotheses"), methods,
                                      [ds.name for ds in datasets])
    if raw.get("tune") is not None:
        exp.tune = parse_tune(raw["tune"], methods, seeds, CACHE_KEYS)
    for ds in datasets:
        if ds.tune is not None:
            if exp.tune is None:
                raise MamfError(f"dataset {ds.name!r}: 'tune' gives this dataset's own grids, "
                                "and needs the experiment's 'tune:' section (its seed)")
            exp.tune.dataset_grids[ds.name] = parse_dataset_grids(ds.tune, ds.name, CACHE_KEYS)
    if exp.tune is not None and strict:
        check_symmetric(exp.tune, methods, {ds.name: ds.methods for ds in datasets})
    for ds in datasets:
        source = names[ds.runs_of] if ds.runs_of else None
        if source and not protocols.get(run_config(
                exp, source, (source.methods or methods)[0], seeds[0],
                "/placeholder").data.protocol).all_way:
            raise MamfError(f"dataset {ds.name!r}: 'runs_of' scores runs of an all-way protocol "
                            "(coop): one task of all the variant's classes")
        for m in ds.methods or methods:  # the methods this entry runs
            for sampler in samplers_of(exp, ds, m):
                for split in exp.splits or [None]:
                    config = run_config(exp, ds, m, seeds[0], "/placeholder", sampler=sampler,
                                        split=split)
                    if ds.shots and not shots:
                        raise MamfError(f"dataset {ds.name!r}: its own 'shots' need the "
                                        "experiment's 'shots' axis (rows are told apart by it)")
                    if (ds.shots or shots) and not protocols.get(config.data.protocol).sets_shots:
                        raise MamfError(f"dataset {ds.name!r}: the 'shots' axis needs a protocol "
                                        "with set shots (episodic, coop, base2novel), not paper")
    return exp


def _plugins() -> None:
    """Every plug-in joins the catalogue (and the registries) before a file is checked against
    them or a config is built."""
    from mamf import plugins  # noqa: F401


def declared_datasets(path: str | Path) -> list[DatasetSpec]:
    """The dataset entries of the experiment file at `path`, each checked as `parse_experiment`
    checks it but for the methods its `method_settings` name (only the registered methods know
    them): what a report reads beside its rows (the builders and their options), without the
    plug-ins and so without torch."""
    path = Path(path)
    raw = _mapping(load_yaml(path), "an experiment file")
    entries = raw.get("datasets")
    if not isinstance(entries, dict) or not entries:
        raise MamfError("experiment 'datasets' must map names to dataset entries")
    return [_dataset(name, entry, path, methods=None) for name, entry in entries.items()]


def _dataset(name, entry, source: Path | None, methods: tuple[str, ...] | None) -> DatasetSpec:
    """One entry of `datasets:`, checked: a folder or a builder, settings, task sizes, and the
    methods its `method_settings` name among `methods` (None: not checked)."""
    if is_int(name) and abs(name) < 10**9:
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
    if root and source is not None and not names_data_root(root):
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
                                        f"datasets.{name}.method_settings", methods),
                       entry.get("methods"),
                       None if entry.get("tune") is None else
                       _mapping(entry["tune"], f"dataset {name!r}: 'tune'"),
                       _axis(entry, "shots", lambda k: is_int(k) and 1 <= k <= AT_MOST["data.shots"],
                             "positive integers", f"dataset {name!r}: "),
                       _runs_of(name, entry))


DATA_ROOT = "MAMF_DATA"  # `${MAMF_DATA}` in a dataset's root: the data root given once


DATA_MARKS = ("${" + DATA_ROOT + "}", "$" + DATA_ROOT)


def names_data_root(root: str) -> bool:
    return root.startswith(DATA_MARKS)


def data_root_in(root: str, name: str) -> str:
    """A dataset root with a leading `${MAMF_DATA}` replaced by the data root (`--data-root`,
    which sets the variable, so that torchrun's and the launcher's processes inherit it);
    resolved when the grid is planned, so that a file is checked without it."""
    if not names_data_root(root):
        return root
    marks = DATA_MARKS
    value = os.environ.get(DATA_ROOT)
    if not value:
        raise MamfError(f"dataset {name!r}: its root {root!r} names the data root: pass "
                        f"--data-root DATA (or set {DATA_ROOT})")
    for m in marks:
        if root.startswith(m):
            return str(Path(value).expanduser() / root[len(m):].lstrip("/"))
    return root


def _runs_of(name: str, entry: dict) -> str | None:
    """`runs_of: <entry>`: only a folder (`root`) goes with it; what is scored and how is the
    other entry's."""
    source = entry.get("runs_of")
    if source is None:
        return None
    if not isinstance(source, str):
        raise MamfError(f"dataset {name!r}: 'runs_of' names another dataset entry, got "
                        f"{shown(source)}")
    other = set(entry) - {"root", "runs_of"}
    if other or not entry.get("root"):
        raise MamfError(f"dataset {name!r}: an entry with 'runs_of' holds only its 'root' (the "
                        f"runs of {source!r} are scored on it with {source!r}'s settings)")
    return source


def _axis(raw: dict, key: str, valid, expected: str, where: str = "") -> list | None:
    """A grid axis (`shots`, `splits`): absent (None), or a non-empty list of distinct values
    that `valid` accepts. `where`: whose axis (a dataset's own), for the error."""
    values = raw.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not values or not all(valid(v) for v in values):
        raise MamfError(f"{where or 'experiment '}{key!r} must be a non-empty list of "
                        f"{expected}, got {shown(values)}")
    _refuse_duplicates(values, f"{where or 'experiment '}{key!r}")
    return values


def _method_settings(raw, where: str, known: tuple[str, ...] | None) -> dict:
    """`method_settings` (of the experiment, or of one dataset): per-method train, metatest and
    baseline sections, which may not change what the dataset's prepared model depends on; the
    methods they name are among `known` (None: not checked)."""
    settings = _mapping(raw, f"experiment {where!r}")
    for m, s in settings.items():
        if known is not None and m not in known:
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
    sizes = [value] if is_int(value) else value
    if not isinstance(sizes, list) or not sizes or \
            not all(is_int(n) and 2 <= n <= MAX_WAYS for n in sizes):
        raise MamfError(f"dataset {name!r}: 'ways' must be a task size (2 to {MAX_WAYS}), a list "
                        f"of them or 'all', got {shown(value)}")
    _refuse_duplicates(sizes, f"dataset {name!r}: 'ways'")
    return value




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


def load_experiment(path: str | Path, strict: bool = True) -> Experiment:
    path = Path(path)
    return parse_experiment(load_yaml(path), path, strict)


def run_config(exp: Experiment, ds: DatasetSpec, method: str, seed: int, root: str,
               ways: int | None = None, sampler: str | None = None,
               shots: int | None = None, split: str | None = None,
               extra: dict | None = None) -> Config:
    """A run's config: defaults, the experiment's settings, the dataset's, the method's, what
    tuning chose for (dataset, method), `extra` (a tuning grid point), then the grid's axes."""
    _plugins()
    merged = deep_merge(EXPERIMENT_DEFAULTS, exp.settings)
    merged = deep_merge(merged, ds.settings)
    merged = deep_merge(merged, exp.method_settings.get(method, {}))
    merged = deep_merge(merged, ds.method_settings.get(method, {}))
    tuned = exp.tuned.get((ds.name, method))
    merged = deep_merge(merged, nested(tuned["values"]) if tuned else {})
    merged = deep_merge(merged, extra)
    merged = deep_merge(merged, {"model": exp.model, "seed": seed, "device": exp.device,
                             "precision": exp.precision, "data": {"root": root}})
    if issubclass(registry.method_class(method), registry.TrainedMethod):
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
    kind = registry.method_class(method)
    if not (issubclass(kind, registry.TrainedMethod) and kind.draws_tasks):
        return [None]
    if exp.samplers:
        return list(exp.samplers)
    return [run_config(exp, ds, method, exp.seeds[0], "/placeholder").train.sampler]


def measurements(exp: Experiment, ds: DatasetSpec, root: str, method: str, seed: int,
                 sampler: str | None) -> list[tuple[str, float | None]]:
    """The (split, alpha) measurements, one row each, that each task size of a method gets: the
    splits axis (or metatest.split) times its alphas (`mamf.engine.wiseft.alphas`)."""
    from mamf.engine.wiseft import alphas

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
        return data_root_in(ds.root, ds.name)
    from mamf.data.builders import build

    same = [d for d in datasets if not d.root and d.build == ds.build and
            json.dumps(d.build_options, sort_keys=True) ==
            json.dumps(ds.build_options, sort_keys=True)]
    name = same[0].name if same else ds.name
    return str(build(ds.build, out / "data" / name, log=log.info, **ds.build_options))
