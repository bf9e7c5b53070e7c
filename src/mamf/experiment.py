"""Grids of runs, dataset x seed x method x task size, resumable, rows appended as they finish.

An experiment file (YAML) names the model, methods, seeds, shared settings, per-method settings
and datasets (a folder, or a builder that makes one). Every finished (dataset, method, ways, seed,
split) row is appended to `results.jsonl` at once; a second invocation skips what is there. All
methods of one (dataset, ways, seed) meet the same test tasks, so they compare pairwise.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mamf import distributed
from mamf.config import METHODS, Config, build_config, dump_yaml, load_yaml
from mamf.errors import MamfError
from mamf.io import append_jsonl, atomic_write_text, read_jsonl
from mamf.lock import exclusive
from mamf.metatest import WeightSnapshot
from mamf.run import RESULTS, evaluate_prepared, prepare, seed_everything, ways_list
from mamf.training import train

log = logging.getLogger(__name__)

TOP_KEYS = {"name", "model", "methods", "seeds", "settings", "method_settings", "datasets",
            "device", "precision"}
DATASET_KEYS = {"root", "build", "build_options", "settings", "ways"}
# settings a method may change without invalidating a dataset's cached tower outputs
METHOD_SECTIONS = {"train", "metatest"}
SAFE_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,64}")
CACHE_KEYS = {"freeze_image_backbone", "freeze_text_tower", "heads"}


@dataclass
class DatasetSpec:
    name: str
    root: str | None = None
    build: str | None = None
    build_options: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    ways: object = None


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


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in (b or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_experiment(raw: dict, source: Path | None = None) -> Experiment:
    """Validate an experiment mapping; every run's config is built once here to catch errors early."""
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise MamfError(f"unknown experiment key(s) {sorted(unknown)} (known: {sorted(TOP_KEYS)})")
    methods = raw.get("methods", list(METHODS))
    if not isinstance(methods, list) or not methods:
        raise MamfError("experiment 'methods' must be a non-empty list")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise MamfError(f"unknown method(s) {bad}: use {', '.join(METHODS)}")
    seeds = raw.get("seeds", [312])
    if isinstance(seeds, int):
        seeds = [seeds]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                              for s in seeds):
        raise MamfError("experiment 'seeds' must be a list of integers")
    method_settings = raw.get("method_settings") or {}
    for m, s in method_settings.items():
        if m not in METHODS:
            raise MamfError(f"method_settings names unknown method {m!r}")
        if not isinstance(s, dict) or set(s) - METHOD_SECTIONS:
            raise MamfError(f"method_settings.{m} may only hold train and metatest sections")
        if CACHE_KEYS & set(s.get("train", {}) or {}):
            raise MamfError(f"method_settings.{m}.train cannot change {sorted(CACHE_KEYS)}: set "
                            "them in settings or per dataset")
    datasets_raw = raw.get("datasets")
    if not isinstance(datasets_raw, dict) or not datasets_raw:
        raise MamfError("experiment 'datasets' must map names to dataset entries")
    datasets = []
    for name, entry in datasets_raw.items():
        entry = entry or {}
        if not SAFE_NAME.fullmatch(str(name)):
            raise MamfError(f"dataset name {name!r} must be letters, digits, '-', '_' or '.' "
                            "(it names a folder inside --out)")
        if not isinstance(entry, dict) or set(entry) - DATASET_KEYS:
            raise MamfError(f"dataset {name!r}: keys must be among {sorted(DATASET_KEYS)}")
        if bool(entry.get("root")) == bool(entry.get("build")):
            raise MamfError(f"dataset {name!r} needs exactly one of 'root' (a folder) or 'build'")
        if entry.get("root") and source is not None:
            entry["root"] = str((source.parent / entry["root"]).expanduser())
        datasets.append(DatasetSpec(str(name), entry.get("root"), entry.get("build"),
                                    entry.get("build_options") or {}, entry.get("settings") or {},
                                    entry.get("ways")))
    exp = Experiment(str(raw.get("name", source.stem if source else "experiment")),
                     str(raw.get("model", "effnet-minilm")), methods, seeds,
                     raw.get("settings") or {}, method_settings, datasets,
                     str(raw.get("device", "auto")), str(raw.get("precision", "auto")), source)
    for ds in datasets:
        for m in methods:
            run_config(exp, ds, m, seeds[0], "/placeholder")
    return exp


def load_experiment(path: str | Path) -> Experiment:
    path = Path(path)
    return parse_experiment(load_yaml(path), path)


def run_config(exp: Experiment, ds: DatasetSpec, method: str, seed: int, root: str,
               ways: int | None = None) -> Config:
    merged = _merge(exp.settings, ds.settings)
    merged = _merge(merged, exp.method_settings.get(method, {}))
    merged = _merge(merged, {"model": exp.model, "seed": seed, "device": exp.device,
                             "precision": exp.precision, "data": {"root": root}})
    if method != "zeroshot":
        merged = _merge(merged, {"train": {"method": method}})
    if ways is not None:
        merged = _merge(merged, {"data": {"ways": ways}})
    try:
        return build_config(merged)
    except MamfError as e:
        raise MamfError(f"dataset {ds.name!r}, method {method!r}: {e}") from None


def row_key(row: dict) -> tuple:
    return (row.get("experiment_dataset", row["dataset"]), row["method"], row["ways"],
            row["seed"], row["split"])


def dataset_root(ds: DatasetSpec, out: Path) -> str:
    if ds.root:
        return ds.root
    from mamf.data.builders import build

    return str(build(ds.build, out / "data" / ds.name, log=log.info, **ds.build_options))


def run_experiment(exp: Experiment, out: str | Path, progress: bool = True) -> list[dict]:
    """Run every missing row of the grid; returns all rows of `out/results.jsonl`.

    Under torchrun every rank runs the grid together (training data-parallel, test tasks
    sharded) and rank 0 alone writes, so the files are those of one process.
    """
    from mamf.inputs import resolve_device

    distributed.init(distributed.local_device(resolve_device(exp.device)))
    with distributed.main_only(exclusive(out)):
        return _run_experiment(exp, Path(out), progress and distributed.is_main())


def _run_experiment(exp: Experiment, out: Path, progress: bool) -> list[dict]:
    from tqdm import tqdm

    results = out / RESULTS
    main = distributed.is_main()
    rows = distributed.from_main(read_jsonl(results))
    others = sorted({r["experiment"] for r in rows if r.get("experiment", exp.name) != exp.name})
    if others:
        raise MamfError(f"{out} holds results of another experiment ({', '.join(others)}): "
                        "choose another --out")
    if exp.source is not None:
        text = exp.source.read_text(encoding="utf-8")
        previous = out / "experiment.yaml"
        if rows and previous.is_file() and previous.read_text(encoding="utf-8") != text:
            log.warning("the experiment file changed since %s was started; finished rows are "
                        "kept, missing ones are computed with the new settings", out)
        if main:
            atomic_write_text(previous, text)
    done = {row_key(r) for r in rows}
    plans = []
    for ds in exp.datasets:
        try:
            with distributed.main_first():
                root = dataset_root(ds, out)
            from mamf.data.folder import scan_folder

            base = run_config(exp, ds, exp.methods[0], exp.seeds[0], root)
            n_classes = len(scan_folder(root, base.data.subdataset).classes)
            ways = ways_list(base, n_classes, ds.ways)
        except MamfError as e:
            log.error("dataset %s skipped: %s", ds.name, e)
            _failure(out, {"dataset": ds.name, "error": str(e)})
            continue
        split = base.metatest.split
        for seed in exp.seeds:
            for method in exp.methods:
                todo = [n for n in ways if (ds.name, method, n, seed, split) not in done]
                if todo:
                    plans.append((ds, root, seed, method, todo))
    total = sum(len(p[4]) for p in plans)
    if total == 0:
        log.info("nothing to do: every row of the grid is in %s", results)
        return rows
    log.info("%d row(s) to compute (%d already done)", total, len(done))
    bar = tqdm(total=total, desc=f"experiment {exp.name}", unit="row",
               disable=None if progress else True)
    clock = _Clock(total)
    prepared: dict[str, tuple] = {}
    for ds, root, seed, method, todo in plans:
        key = ds.name
        if key not in prepared:
            prepared.clear()  # one dataset's model and caches in memory at a time
            try:
                config = run_config(exp, ds, method, seed, root)
                with clock.apart() as one_off:
                    model, dataset, inputs = prepare(config, fresh=True)
                log.info("%s: model and caches ready in %.1f s (once; not counted in the time "
                         "left)", ds.name, one_off())
                prepared[key] = (model, dataset, inputs, WeightSnapshot(model))
            except MamfError as e:
                log.error("dataset %s skipped: %s", ds.name, e)
                _failure(out, {"dataset": ds.name, "error": str(e)})
                bar.update(len(todo))
                continue
        model, dataset, inputs, pretrained = prepared[key]
        units = [todo] if method in ("zeroshot", "classical") else [[n] for n in todo]
        for unit in units:
            try:
                for row in _run_unit(exp, ds, root, seed, method, unit, model, dataset, inputs,
                                     pretrained, results, progress):
                    if main:
                        log.info("%s %s %s-way seed %d: %.3f ± %.3f  [%s]", ds.name,
                                 method, row["ways"], seed, row["acc_mean"], row["acc_ci95"],
                                 clock.tick())
            except MamfError as e:
                log.error("%s %s seed %d ways %s failed: %s", ds.name, method, seed, unit, e)
                _failure(out, {"dataset": ds.name, "method": method, "seed": seed,
                               "ways": unit, "error": str(e)})
            except Exception as e:  # a bug must not stop the grid; it is recorded in full
                if distributed.world_size() > 1:
                    raise  # one rank's crash: the ranks are out of step, so the job stops
                log.error("%s %s seed %d ways %s crashed: %s", ds.name, method, seed, unit, e)
                _failure(out, {"dataset": ds.name, "method": method, "seed": seed,
                               "ways": unit, "error": repr(e),
                               "traceback": traceback.format_exc()})
            bar.update(len(unit))
    bar.close()
    return distributed.from_main(read_jsonl(results) if main else None)


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


def _run_unit(exp, ds, root, seed, method, unit, model, dataset, inputs, pretrained, results,
              progress):
    """Train once (per task size for task-based methods), then meta-test every size in `unit`."""
    pretrained.restore()
    config = run_config(exp, ds, method, seed, root, ways=unit[0])
    seed_everything(seed)
    inputs.generator.manual_seed(seed)
    train_info = {}
    if method != "zeroshot":
        started = time.perf_counter()
        result = train(model, inputs, dataset, config, progress)
        train_info = {"train_steps": result.steps,
                      "train_time_s": round(time.perf_counter() - started, 3),
                      "train_loss_first": result.losses[0], "train_loss_last": result.losses[-1]}
    for n in unit:
        config = run_config(exp, ds, method, seed, root, ways=n)
        row = evaluate_prepared(model, dataset, inputs, config, method, n, progress)
        row.update(train_info)
        row.update({"experiment": exp.name, "experiment_dataset": ds.name})
        if distributed.is_main():
            config_file = results.parent / "configs" / f"{row['config_id']}.yaml"
            if not config_file.exists():
                atomic_write_text(config_file, dump_yaml(config))
            append_jsonl(results, row)
        yield row


def _failure(out: Path, record: dict) -> None:
    if distributed.is_main():
        append_jsonl(out / "failures.jsonl", {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record})
