"""Running an experiment grid (`mamf.runs.experiment_file` reads and checks it): resumable, rows
appended as they finish.

Every finished row is appended to `results.jsonl` at once; a second invocation skips the rows
of the grid that are there (by `results.grid_key`). The grid is planned as method runs (`Plan`),
each trained once per unit (`units_of`). All methods and samplers of one (dataset, ways, seed)
meet the same test tasks, so they compare pairwise; every row also carries each test task's
prompt similarity under the pretrained model (`task_similarity`), computed once per dataset
before any training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mamf import methods as registry
from mamf import protocols
from mamf.catalogue import Config
from mamf.engine.metatest import WeightSnapshot
from mamf.engine.training import train
from mamf.engine.trainlog import CSV_NAME
from mamf.engine.wiseft import Interpolation, starting_weights
from mamf.models.registry import prefetch
from mamf.parallel import distributed
from mamf.results import Row, RowKey, grid_key, read_rows, this_code
from mamf.runs.experiment_file import (  # noqa: F401  (the grid's parts, for callers of experiments)
    DATA_ROOT,
    DatasetSpec,
    Experiment,
    dataset_root,
    load_experiment,
    measurements,
    names_data_root,
    parse_experiment,
    run_config,
    samplers_of,
)
from mamf.runs.hypotheses import digest
from mamf.runs.measure import RESULTS, evaluate_prepared, record
from mamf.runs.prepare import fresh_start, images_read, prepare
from mamf.runs.tune import tune_experiment
from mamf.runs.ways import ways_list
from mamf.system.errors import MamfError
from mamf.system.io import append_jsonl, atomic_write_bytes, make_folder
from mamf.system.lock import exclusive
from mamf.system.progress import Eta
from mamf.tasks import samplers

log = logging.getLogger(__name__)


def run_experiment(exp: Experiment, out: str | Path, progress: bool = True) -> list[Row]:
    """Run every missing row of the grid; returns all rows of `out/results.jsonl`.

    Under torchrun every rank runs the grid together (training data-parallel, test tasks
    sharded) and rank 0 alone writes, so the files are those of one process.
    """
    from mamf.features.inputs import resolve_device

    distributed.init(distributed.local_device(resolve_device(exp.device)))
    with distributed.main_only(exclusive(out)):
        return _run_experiment(exp, Path(out), progress and distributed.is_main())


class Plan(NamedTuple):
    """One method run of the grid with rows still to compute."""

    ds: DatasetSpec
    root: str  # the dataset's folder
    seed: int
    method: str
    sampler: str | None
    todo: list[int]  # the task sizes with a missing row
    ways: list[int]  # every task size of the dataset
    missing: list[tuple[int, str, float | None]]  # (ways, split, alpha) of each missing row
    shots: int | None  # the grid's shots axis value, if it has one
    # the entries scoring this run's weights too (`runs_of`): (entry, its folder, its class
    # count, the (split, alpha) of each of its missing rows)
    also: tuple = ()

    def also_missing(self) -> int:
        return sum(len(missing) for *_, missing in self.also)


def _run_experiment(exp: Experiment, out: Path, progress: bool, job: str | None = None) \
        -> list[Row]:
    """The grid's missing rows, in-process; `job`: only the unit `unit_id` names, its rows
    appended to its own `jobs/<id>/results.jsonl` (`mamf.runs.launcher`), never to the shared file."""
    from tqdm import tqdm

    rows = distributed.from_main(read_rows(out / RESULTS) if distributed.is_main() else None)
    _claim(exp, out, rows, job)
    prefetch(exp.model)  # the model loads while the datasets are built
    if exp.tune is not None:  # rates chosen on dev tasks before any row is computed
        exp.tuned = tune_experiment(exp, out, progress, compute=job is None and distributed.is_main())
        _refuse_other_tuning(exp, rows, out)
    done = {grid_key(r, bool(exp.shots)) for r in rows}
    plans, skipped = plan(exp, out, done)
    results = out / RESULTS
    if job is not None:  # the unit as the launcher planned it; rows it wrote before are done
        results = job_results(out, job)
        plans = [p._replace(todo=u) for p in plans for u in units_of(p) if unit_id(p, u) == job]
        if not plans:
            raise MamfError(f"job {job}: no such unit left in the grid of {out}")
        done |= {grid_key(r, bool(exp.shots)) for r in read_rows(results)}
    total = sum(len(p.missing) + p.also_missing() for p in plans)
    if total == 0:
        if skipped:
            log.warning("nothing computed: dataset(s) %s skipped (see above); the rest of the "
                        "grid is in %s", ", ".join(skipped), results)
        else:
            log.info("nothing to do: every row of the grid is in %s", results)
        return rows
    log.info("%d row(s) to compute (%d already done)", total, len(done))
    bar = tqdm(total=total, desc=f"experiment {exp.name}", unit="row",
               disable=None if progress else True)
    clock = _Clock(total, *_planned(exp, plans))
    prepared: dict[str, tuple] = {}
    checked = False
    for p in plans:
        if p.ds.name not in prepared:
            prepared.clear()  # one dataset's model and caches in memory at a time
            try:
                prepared[p.ds.name] = _prepare_dataset(
                    exp, p, clock, [q for q in plans if q.ds.name == p.ds.name])
            except MamfError as e:
                log.error("dataset %s skipped: %s", p.ds.name, e)
                _failure(results.parent, {"dataset": p.ds.name, "error": str(e)})
                bar.update(len(p.missing))
                for unit in units_of(p):
                    clock.drop(clock.unit(), sum(1 for n, _, _ in p.missing if n in unit))
                continue
            if not checked:  # before anything trains: a method the model cannot serve
                registry.check_model([q.method for q in plans], prepared[p.ds.name][0])
                checked = True
        for unit in units_of(p):
            # a job's failures go to its own folder, beside its rows (the launcher reports them)
            _run_recorded(exp, results.parent, p, unit, prepared[p.ds.name], results, progress,
                          done, bar, clock)
    bar.close()
    return distributed.from_main(read_rows(results) if distributed.is_main() else None)


def _refuse_other_tuning(exp: Experiment, rows: list[Row], out: Path) -> None:
    """Rows trained with another choice than tune.json's (a re-tune's earlier rows) would mix
    two tunings in one table: they must leave results.jsonl first."""
    for r in rows:
        chosen = exp.tuned.get((r.dataset_name, r.method))
        if chosen and (r.tuned_on_dev or {}).get("values") != chosen["values"]:
            raise MamfError(f"{out / RESULTS} holds {r.method} rows on {r.dataset_name} tuned "
                            f"otherwise than {out}/tune.json says (a re-tune): move them aside "
                            "to keep them")


def _claim(exp: Experiment, out: Path, rows: list[Row], job: str | None) -> None:
    """Refuse a folder of another experiment's rows; keep the experiment file beside the rows
    (warning when it changed since they were started, or another mamf computed some)."""
    others = sorted({r.experiment for r in rows if r.experiment not in (None, exp.name)})
    if others:
        raise MamfError(f"{out} holds results of another experiment ({', '.join(others)}): "
                        "choose another --out")
    if exp.source is not None and job is None:
        text = exp.source.read_bytes()
        previous = out / "experiment.yaml"
        if rows and previous.is_file() and previous.read_bytes() != text:
            log.warning("the experiment file changed since %s was started; finished rows are "
                        "kept, missing ones are computed with the new settings", out)
        if distributed.is_main():
            atomic_write_bytes(previous, text)
    if job is None and distributed.is_main():
        _warn_other_code(rows, out)


def _warn_other_code(rows: list[Row], out: Path) -> None:
    """Say when finished rows were computed by another mamf (version or commit): they are kept
    as finished, so a method whose rules or defaults changed since is not recomputed unless its
    rows are deleted (its settings' hash need not change with its code)."""
    if not rows:
        return
    mine = this_code()
    other = Counter((r.environment.get("mamf"), r.environment.get("mamf_commit")) for r in rows)
    other.pop(mine, None)
    if other:
        (version, commit), _ = other.most_common(1)[0]
        log.warning("%d of the %d finished rows in %s were computed by another mamf (%s%s; "
                    "this one is %s%s): they are kept, not recomputed; delete a method's rows "
                    "to measure it again with this code", sum(other.values()), len(rows), out,
                    version or "version unrecorded", f", commit {commit[:7]}" if commit else "",
                    mine[0], f", commit {mine[1][:7]}" if mine[1] else "")


def _prepare_dataset(exp: Experiment, p: Plan, clock: _Clock, plans: list[Plan]) -> tuple:
    """The dataset's model, images, inputs, the pretrained weights and every class's prompt
    embedding under them (before any training), once per dataset. A frozen image tower computes
    first what the dataset's `plans` read."""
    config = run_config(exp, p.ds, p.method, p.seed, p.root)

    def reads(dataset) -> np.ndarray | None:
        try:
            return np.unique(np.concatenate([
                images_read(dataset, run_config(exp, q.ds, q.method, q.seed, q.root,
                                                shots=q.shots), q.method,
                            {split for _, split, _ in q.missing}) for q in plans]))
        except MamfError:  # a split the protocol cannot form: every image, and the row that
            return None    # reads that split reports it, as it always did

    with clock.apart() as one_off:
        draws = {(run_config(exp, q.ds, q.method, q.seed, q.root, shots=q.shots).data.shots,
                  q.seed) for q in plans}
        model, dataset, inputs = prepare(config, reads=reads, draws=draws)
        prompts = samplers.prompt_embeddings(model, inputs, np.arange(len(dataset.classes)))
    log.info("%s: model and caches ready in %.1f s (once; not counted in the time left)",
             p.ds.name, one_off())
    return model, dataset, inputs, WeightSnapshot(model), prompts


def _run_recorded(exp: Experiment, out: Path, p: Plan, unit: list[int], prepared: tuple,
                  results: Path, progress: bool, done: set, bar, clock: _Clock) -> None:
    """One unit's rows, logged as they come; a failure is recorded and the grid goes on."""
    model, dataset, inputs, pretrained, prompts = prepared
    name = p.method if p.sampler is None else f"{p.method} ({p.sampler})"
    left = sum(1 for n, _, _ in p.missing if n in unit) + \
        (p.also_missing() if unit == units_of(p)[-1] else 0)
    work = clock.unit()
    try:
        for row in _run_unit(exp, p, unit, model, dataset, inputs, pretrained, prompts,
                             results, progress, done):
            left -= 1
            bar.update(1)
            line = clock.row(work, row)
            if distributed.is_main():
                at = (f" {row.split}" if exp.splits else "") + \
                    ("" if row.alpha is None else f" alpha {row.alpha}")
                log.info("%s %s %s-way seed %d%s: %.3f ± %.3f  [%s]", p.ds.name, name,
                         row.ways, p.seed, at, row.acc_mean, row.acc_ci95, line)
    except MamfError as e:
        log.error("%s %s seed %d ways %s failed: %s", p.ds.name, name, p.seed, unit, e)
        _failure(out, {"dataset": p.ds.name, "method": p.method, "sampler": p.sampler,
                       "seed": p.seed, "ways": unit, "error": str(e)})
    except Exception as e:  # a bug must not stop the grid; it is recorded in full
        if distributed.world_size() > 1:
            raise  # one rank's crash: the ranks are out of step, so the job stops
        log.error("%s %s seed %d ways %s crashed: %s", p.ds.name, name, p.seed, unit, e)
        _failure(out, {"dataset": p.ds.name, "method": p.method, "sampler": p.sampler,
                       "seed": p.seed, "ways": unit, "error": repr(e),
                       "traceback": traceback.format_exc()})
    bar.update(left)  # rows a failure left undone
    clock.drop(work, left)


def plan(exp: Experiment, out: Path, done: set) -> tuple[list[Plan], list[str]]:
    """Every method run with rows not in `done`, building datasets that are not yet built; and
    the names of the datasets skipped (they could not be built or read)."""
    plans, skipped = [], []
    need_root(exp)
    scorers = _scorers(exp, out, skipped)
    for ds in exp.datasets:
        if ds.runs_of is not None:
            continue  # planned with the runs it scores
        try:
            with distributed.main_first():
                root = dataset_root(ds, out, exp.datasets)
            from mamf.data.dataset import class_count

            base = run_config(exp, ds, exp.methods[0], exp.seeds[0], root)
            n_classes = class_count(root, base.data.subdataset)
            ways = ways_list(base, n_classes, ds.ways)
        except MamfError as e:
            log.error("dataset %s skipped: %s", ds.name, e)
            _failure(out, {"dataset": ds.name, "error": str(e)})
            skipped.append(ds.name)
            continue
        for shots in ds.shots or exp.shots or [None]:
            for seed in exp.seeds:
                for method in exp.methods:
                    if ds.methods is not None and method not in ds.methods:
                        continue
                    for sampler in samplers_of(exp, ds, method):
                        slots = measurements(exp, ds, root, method, seed, sampler)
                        missing = [(n, split, alpha) for n in ways for split, alpha in slots
                                   if planned_grid_key(ds, method, sampler, seed, shots, n, split,
                                                alpha) not in done]
                        todo = sorted({n for n, _, _ in missing}, key=ways.index)
                        tests = [c for c in slots if c[0] == "test"]  # what a test-only variant can score
                        also = tuple(
                            (v, v_root, n, tuple(c for c in tests if planned_grid_key(
                                v, method, sampler, seed, shots, n, *c) not in done))
                            for v, v_root, n in scorers.get(ds.name, []))
                        also = tuple(a for a in also if a[3])
                        if also and not todo:
                            todo = ways[:1]  # the run trains again for the entries it scores
                        if todo:
                            plans.append(Plan(ds, root, seed, method, sampler, todo, ways,
                                              missing, shots, also))
    return plans, skipped


def need_root(exp: Experiment) -> None:
    """The data root is given once for the whole grid: without it, one line before anything runs
    (not one failure per dataset)."""
    named = [ds.name for ds in exp.datasets if ds.root and names_data_root(ds.root)]
    if named and not os.environ.get(DATA_ROOT):
        raise MamfError(f"{len(named)} dataset(s) of {exp.name} ({named[0]}, ...) live under the "
                        f"data root: pass --data-root DATA (or set {DATA_ROOT})")


def _scorers(exp: Experiment, out: Path, skipped: list[str]) -> dict[str, list[tuple]]:
    """Per training entry, the `runs_of` entries that score its runs: (entry, folder, classes)."""
    from mamf.data.dataset import class_count

    found: dict[str, list[tuple]] = {}
    for v in exp.datasets:
        if v.runs_of is None:
            continue
        try:
            root = dataset_root(v, out, exp.datasets)
            found.setdefault(v.runs_of, []).append((v, root, class_count(root)))
        except MamfError as e:
            log.error("dataset %s skipped: %s", v.name, e)
            _failure(out, {"dataset": v.name, "error": str(e)})
            skipped.append(v.name)
    return found


def planned_grid_key(ds: DatasetSpec, method: str, sampler: str | None, seed: int,
                     shots: int | None, ways: int, split: str, alpha: float | None) -> RowKey:
    """The `grid_key` of the row a method run of the grid writes at (ways, split, alpha), before
    it is measured: what the grid names, the rest blank."""
    return RowKey.partial(dataset=ds.name, method=method, sampler=sampler, seed=seed,
                          shots=shots, ways=ways, split=split, alpha=alpha)


def units_of(p: Plan) -> list[list[int]]:
    """A plan's units, each one training: per task size, or once for all its sizes."""
    kind = registry.method_class(p.method)
    per_ways = issubclass(kind, registry.TrainedMethod) and kind.trains_per_ways
    return [[n] for n in p.todo] if per_ways else [p.todo]


def unit_id(p: Plan, unit: list[int]) -> str:
    """A unit's name, the same in the launcher and in its job: what it trains and for whom."""
    what = json.dumps([p.ds.name, p.seed, p.method, p.sampler, p.shots, unit])
    return f"{p.ds.name}-{p.method}-s{p.seed}-" + hashlib.sha256(what.encode()).hexdigest()[:10]


def job_results(out: Path, job: str) -> Path:
    return out / "jobs" / job / RESULTS


class _Clock:
    """Rows done of the total and the time left, for log lines: each kind of work (a method's
    training, its test tasks) at its own measured rate (`progress.Eta`), one-off costs (the model
    and its caches) timed apart; `works`: each unit's work (`unit_work`), in the order units run."""

    def __init__(self, total: int, eta: Eta, works: list[list[tuple]]):
        self.total, self.rows, self.eta, self.works = total, 0, eta, works

    def apart(self):
        return self.eta.apart()

    def unit(self) -> list[tuple]:
        """The next unit's work, as it starts."""
        return self.works.pop(0)

    def row(self, work: list[tuple], row: Row) -> str:
        """A finished row into the clock; its log line's `12/36, about 1.5 min left`."""
        self.rows += 1
        _measured(self.eta, work, row)
        return self.eta.line(self.rows, self.total)

    def drop(self, work: list[tuple], rows: int) -> None:
        """What a failure (or a skipped dataset) left undone: not waited for."""
        self.rows += rows
        for kind, units, _ in work:
            self.eta.forget(kind, units)
        work.clear()


def _planned(exp: Experiment, plans: list[Plan]) -> tuple[Eta, list[list[tuple]]]:
    """The grid's clock and each unit's work (`unit_work`), in the order the units run."""
    from mamf.data.dataset import class_count

    eta, works, classes = Eta(), [], {}
    for p in plans:
        if p.root not in classes:
            base = run_config(exp, p.ds, p.method, p.seed, p.root)
            classes[p.root] = class_count(p.root, base.data.subdataset)
        for unit in units_of(p):
            works.append(unit_work(exp, p, unit, classes[p.root]))
            for kind, units, _ in works[-1]:
                eta.add_todo(kind, units)
    return eta, works


def _measured(eta: Eta, work: list[tuple], row: Row) -> None:
    """A finished row's times into the clock: its unit's training (with the unit's first row)
    and its own test tasks; `work` keeps what of the unit is still to come."""
    for item in [w for w in work if w[2] is None][:1] + \
            [w for w in work if w[2] == row.ways][:1]:
        kind, units, _ = item
        eta.done(kind, (row.train_time_s or 0.0) if kind[0] == "train" else row.time_s,
                 units)
        work.remove(item)


def unit_work(exp: Experiment, p: Plan, unit: list[int], n_classes: int) -> list[tuple]:
    """The (kind, units, n) of work a unit still has, for the time left (`mamf.system.progress.Eta`): its
    training, once, and each missing row's test tasks (K(n, N) under the `paper` protocol, so a
    2-way row weighs what its 100-odd tasks cost). Kinds are per dataset, method, sampler and
    shots: their costs differ by orders of magnitude."""
    kind = (p.ds.name, p.method, p.sampler, p.shots)
    trains = issubclass(registry.method_class(p.method), registry.TrainedMethod)
    work = [(("train", *kind), 1.0, None)] if trains else []
    data = run_config(exp, p.ds, p.method, p.seed, p.root).data
    protocol = protocols.get(data.protocol)
    for n, _, _ in p.missing:
        if n in unit:
            work.append((("test", *kind), protocol.test_task_count(data, n, n_classes), n))
    return work


def _run_unit(exp: Experiment, p: Plan, unit: list[int], model, dataset, inputs, pretrained,
              prompts, results: Path, progress: bool, done=frozenset()):
    """Train once (per task size for task-based methods), then meta-test every size in `unit`
    on each (split, alpha) not in `done`.

    A method trained once for every size trains exactly as in an uninterrupted grid (with the
    first of the dataset's sizes, `ways[0]`), however many of its rows are already done, and
    random heads and adapters are drawn from the unit's seed: a resumed grid writes the rows of
    a whole one. `prompts`: the dataset's prompt embeddings under the pretrained model
    (`task_similarity`). WiSE-FT's zero-shot weights are the model as this unit's training starts.
    """
    ds, root, seed, method, sampler, ways, shots = \
        p.ds, p.root, p.seed, p.method, p.sampler, p.ways, p.shots
    kind = registry.method_class(method)
    trains = issubclass(kind, registry.TrainedMethod)
    per_ways = trains and kind.trains_per_ways
    config = run_config(exp, ds, method, seed, root, sampler=sampler, shots=shots)
    if not protocols.get(config.data.protocol).all_way:  # all-way protocols train with data.ways as set
        config = run_config(exp, ds, method, seed, root, sampler=sampler, shots=shots,
                            ways=unit[0] if per_ways else ways[0])
    fresh_start(model, inputs, pretrained, config, trains)
    train_info = {}
    tuned = exp.tuned.get((ds.name, method))
    if tuned:
        train_info["tuned_on_dev"] = tuned
    mix = None
    if trains:
        mixes = any(a is not None
                    for _, a in measurements(exp, ds, root, method, seed, sampler))
        start = starting_weights(model) if mixes else None
        started = time.perf_counter()
        logs = train_log_folder(results.parent, ds.name, method, sampler, seed, shots,
                                unit[0] if per_ways else None)
        result = train(model, inputs, dataset, _own_log_dir(config, logs.name), progress,
                       log_folder=logs if distributed.is_main() else None)
        train_info |= {"train_log": str((logs / CSV_NAME).relative_to(results.parent)),
                       "train_steps": result.steps, "train_images": result.images,
                       "train_budget": result.budget,
                      "train_time_s": round(time.perf_counter() - started, 3),
                      "train_loss_first": result.losses[0], "train_loss_last": result.losses[-1],
                      "train_at_chance": result.at_chance, "train_collapsed": result.collapsed}
        mix = Interpolation(model, start) if start is not None else None
    for n in unit:
        for split, alpha in measurements(exp, ds, root, method, seed, sampler):
            if planned_grid_key(ds, method, sampler, seed, shots, n, split, alpha) in done:
                continue
            config = run_config(exp, ds, method, seed, root, ways=n, sampler=sampler,
                                shots=shots, split=split)
            if alpha is not None and mix is None:  # interpolate set per split or method
                raise MamfError(f"metatest.interpolate of {method} must be set for every split")
            with mix.at(alpha) if mix else contextlib.nullcontext():
                row = evaluate_prepared(model, dataset, inputs, config, method, n, progress,
                                        prompts, alpha=alpha)
            yield _recorded(exp, ds, row, train_info, config, results)
    if unit == units_of(p)[-1]:  # the entries that score this run (`runs_of`), last
        for v, v_root, n, v_cells in p.also:
            _, v_dataset, v_inputs = prepare(run_config(exp, ds, method, seed, v_root, ways=n,
                                                        sampler=sampler, shots=shots), model)
            for split, alpha in v_cells:
                if planned_grid_key(v, method, sampler, seed, shots, n, split, alpha) in done:
                    continue
                config = run_config(exp, ds, method, seed, v_root, ways=n, sampler=sampler,
                                    shots=shots, split=split)
                with mix.at(alpha) if mix else contextlib.nullcontext():
                    row = evaluate_prepared(model, v_dataset, v_inputs, config, method, n,
                                            progress, alpha=alpha)
                yield _recorded(exp, v, row, train_info, config, results)


def _recorded(exp: Experiment, ds: DatasetSpec, row: Row, train_info: dict, config,
              results: Path) -> Row:
    """A unit's row, with what its training was, appended to the results (and its config)."""
    declared = {"hypotheses_sha256": digest(exp.hypotheses)} if exp.hypotheses else {}
    return record(row, results, config, {**train_info, "experiment": exp.name,
                                         "experiment_dataset": ds.name, **declared})


def _own_log_dir(config: Config, name: str) -> Config:
    """The training's config with its TensorBoard run in `train.log_dir`/`name`: one run per
    training, named by its place in the grid (the log folder is no setting of the measurement)."""
    if not config.train.log_dir:
        return config
    log_dir = str(Path(config.train.log_dir).expanduser() / name)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, log_dir=log_dir))


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
