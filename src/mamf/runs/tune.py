"""Learning rates chosen on dev-split tasks, on a grid (docs/method.md, "Tuning").

An experiment's `tune:` section names a grid of settings (dotted keys: `train.*` ones retrain,
`metatest.*` ones only re-score the trained weights), a seed (or several) that is none of the
experiment's seeds, and the task sizes to tune at. For each dataset and method every grid point
trains on the training split with each tune seed and is scored on tasks drawn from the *dev*
split; the point with the best mean dev accuracy (ties: the first in grid order) is then used by
every seed of the experiment, and its rows record it (`tuned_on_dev`). A point whose loss
diverges is recorded as such and never chosen. No test-split task is drawn and no test
image read. Every grid point's score goes to `tune.json`, written atomically after each training,
so a killed tuning resumes where it stopped.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np

from mamf import methods as registry
from mamf.catalogue import Config
from mamf.runs.experiment_file import dataset_root, run_config
from mamf.runs.tune_rule import CHANCE_MARGIN, collapsed_seeds, eligible  # noqa: F401
from mamf.runs.tune_spec import TuneSpec, nested
from mamf.system.errors import Diverged, MamfError, shown
from mamf.system.io import atomic_write_text

log = logging.getLogger(__name__)

TUNE_FILE = "tune.json"
def points(grid: dict[str, list], section: str) -> list[dict]:
    """Every combination of the grid's keys of one section, in grid order ([{}] for none)."""
    keys = [k for k in grid if k.startswith(section + ".")]
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def entry_key(dataset: str, method: str) -> str:
    return f"{dataset}/{method}"


def read_tune(out: Path) -> dict:
    path = Path(out) / TUNE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MamfError(f"{path} is unreadable ({e}): delete it to tune again") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
        raise MamfError(f"{path} is damaged: delete it to tune again")
    for key, entry in data["entries"].items():
        broken = _broken_entry(entry)
        if broken:
            raise MamfError(f"{path} is damaged ({key}: {broken}): delete it to tune again")
    return data


def _broken_entry(entry) -> str | None:
    """What is wrong with one entry of tune.json as `tune_experiment` reads it, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    if not isinstance(entry.get("grid"), dict) or not isinstance(entry.get("scores"), list):
        return "no grid or no scores list"
    for score in entry["scores"]:
        if not isinstance(score, dict) or not isinstance(score.get("train"), dict) \
                or not isinstance(score.get("metatest"), dict):
            return "a score without its grid point"
        if not isinstance(score.get("ways"), list):
            return "a score without its task sizes"
        acc = score.get("dev_acc", "missing")
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float))
                                or not 0 <= acc <= 1):
            return f"a dev accuracy of {shown(acc)}"
    return None


def choose(scores: list[dict], where: str = "") -> dict:
    """The grid point with the best mean dev accuracy among the `eligible`; ties go to the
    first in grid order."""
    finite = eligible(scores)
    if not finite:
        raise MamfError(f"every tuning grid point of {where or 'this entry'} diverged or "
                        "trained to chance: give the grid lower rates")
    return max(finite, key=lambda s: s["dev_acc"])  # max keeps the first of equal keys


def _tested(out: Path) -> set[str]:
    """The datasets of the experiment rows already in `out` (their test rows exist)."""
    from mamf.results import read_rows
    from mamf.runs.measure import RESULTS

    if not (out / RESULTS).is_file():
        return set()
    return {r.dataset_name for r in read_rows(out / RESULTS)}


def _refuse_retune(dataset: str, method: str) -> None:
    raise MamfError(f"{dataset} {method}: tuning again after its test rows exist is refused; "
                    "say why in the file's tune.retune (every method is then re-tuned), or "
                    "choose another --out")


def _retune(state: dict, spec: TuneSpec, tested: set[str], out: Path) -> None:
    """A re-tune the file asks for (`tune.retune`, a reason): every method's entries on the
    datasets with rows are tuned again, the earlier ones kept under `before_retune`; then the
    rows of the earlier tuning must leave results.jsonl before new ones are computed."""
    if not spec.retune or state.get("retune") == spec.retune:
        return
    dropped = {k: v for k, v in state["entries"].items() if k.split("/")[0] in tested}
    state.setdefault("before_retune", []).append({"entries": dropped,
                                                  "retune": state.get("retune")})
    state["entries"] = {k: v for k, v in state["entries"].items() if k not in dropped}
    state["retune"] = spec.retune
    atomic_write_text(out / TUNE_FILE, json.dumps(state, indent=1))
    log.warning("re-tuning every method on %s: %s", ", ".join(sorted(tested)), spec.retune)


def tune_experiment(exp, out: Path, progress: bool = False, compute: bool = True) -> dict:
    """Choose every (dataset, method)'s grid point on dev tasks, computing what `tune.json` in
    `out` lacks (`compute`: False only reads it); returns {(dataset, method): chosen record}."""
    spec: TuneSpec = exp.tune
    out = Path(out)
    state = read_tune(out) or {"seed": spec.seed, "entries": {}}
    if state.get("seed") != spec.seed:
        raise MamfError(f"{out / TUNE_FILE} was tuned with seed {state.get('seed')}, not "
                        f"{spec.seed}: delete it to tune again")
    tested = _tested(out) if compute else set()
    _retune(state, spec, tested, out)
    if spec.retune and state.get("retune") == spec.retune:
        tested = set()  # a re-tune the file asks for, every method's entries tuned again
    chosen, prepared = {}, {}  # one dataset's model and caches in memory at a time
    for ds in exp.datasets:
        if ds.runs_of is not None:
            continue  # it trains nothing: the runs it scores are tuned on their own data
        root = None
        for method in spec.methods_of(exp.methods):
            grid = spec.grid_of(method, ds.name)
            if not grid or ds.methods is not None and method not in ds.methods:
                continue
            entry = state["entries"].setdefault(entry_key(ds.name, method),
                                                {"grid": grid, "scores": []})
            if ds.name in tested and (entry["grid"] != grid or not entry["scores"]):
                _refuse_retune(ds.name, method)
            if entry["grid"] != grid:
                raise MamfError(f"{out / TUNE_FILE} holds another grid for {ds.name} {method}: "
                                "delete it to tune again")
            todo = [p for p in points(grid, "train")
                    if not any(s["train"] == p for s in entry["scores"])]
            if todo and not compute:
                raise MamfError(f"{out / TUNE_FILE} lacks {ds.name} {method}: run `mamf tune`")
            if todo and ds.name in tested:
                _refuse_retune(ds.name, method)
            for point in todo:
                if root is None:
                    root = dataset_root(ds, out, exp.datasets)
                entry["scores"] += _score_point(exp, ds, root, method, point, grid, progress,
                                                prepared)
                atomic_write_text(out / TUNE_FILE, json.dumps(state, indent=1))
            best = choose(entry["scores"], f"{ds.name} {method}")
            entry["chosen"] = {**best["train"], **best["metatest"]}
            chosen[(ds.name, method)] = {"values": entry["chosen"], "seed": spec.seed,
                                         "dev_acc": best["dev_acc"], "ways": best["ways"]}
            if spec.retune:
                chosen[(ds.name, method)]["retune"] = spec.retune
            log.info("%s %s: chosen on dev %s (dev accuracy %.3f)", ds.name, method,
                     entry["chosen"], best["dev_acc"])
    if compute:
        atomic_write_text(out / TUNE_FILE, json.dumps(state, indent=1))
    return chosen


def _score_point(exp, ds, root: str, method: str, train_point: dict, grid: dict,
                 progress: bool, _prepared: dict) -> list[dict]:
    """Train once per tuned task size (once for all for a method that does not train per size)
    at `train_point` with the tune seed, then score every metatest point on dev tasks."""
    from mamf.engine.metatest import WeightSnapshot
    from mamf.engine.training import train
    from mamf.runs.measure import evaluate_prepared
    from mamf.runs.prepare import fresh_start, prepare
    from mamf.runs.ways import ways_list
    from mamf.tasks import samplers

    spec: TuneSpec = exp.tune
    kind = registry.method_class(method)
    trains = issubclass(kind, registry.TrainedMethod)
    extra = nested(train_point)
    if _prepared.get("key") != (exp.name, ds.name, root):
        _prepared.clear()
        config = _config(exp, ds, method, root, extra)
        model, dataset, inputs = prepare(config)
        registry.check_model(spec.methods_of(exp.methods), model)  # before anything trains
        prompts = samplers.prompt_embeddings(model, inputs, np.arange(len(dataset.classes)))
        _prepared.update(key=(exp.name, ds.name, root),
                         value=(model, dataset, inputs, WeightSnapshot(model), prompts))
    model, dataset, inputs, pretrained, prompts = _prepared["value"]
    base = _config(exp, ds, method, root, extra)
    sizes = spec.ways or ways_list(base, dataset.n_classes, ds.ways)[:1]
    tests = points(grid, "metatest")
    # grid point -> tune seed -> dev accuracies (one per tuned size)
    accs: dict[int, dict[int, list[float]]] = {k: {} for k in range(len(tests))}
    diverged: dict[int, str] = {}  # grid point -> where its loss became NaN or infinite
    collapsed: set[int] = set()  # tune seeds whose training collapsed to chance
    dev_tasks: dict[int, int] = {}  # grid point -> dev tasks each scoring drew (the caveats')
    for seed in spec.seeds:
        if len(diverged) == len(tests):
            break  # diverged under an earlier seed: no mean can be formed
        for group in ([[n] for n in sizes] if trains and kind.trains_per_ways else [sizes]):
            config = _config(exp, ds, method, root, extra, ways=group[0], seed=seed)
            fresh_start(model, inputs, pretrained, config, trains)
            if trains:
                try:
                    result = train(model, inputs, dataset, config, progress)
                    if result.collapsed:  # one rule for every method (`mamf.engine.chance`)
                        collapsed.add(seed)
                except Diverged as e:
                    log.info("tune %s %s %s seed %d: diverged in training (%s)", ds.name,
                             method, train_point, seed, e)
                    diverged.update({k: "training" for k in range(len(tests))})
                    continue
            for n in group:
                for k, test_point in enumerate(tests):
                    if k in diverged:
                        continue
                    scored = _config(exp, ds, method, root, {**extra, **nested(test_point)},
                                     ways=n, seed=seed)
                    try:
                        row = evaluate_prepared(model, dataset, inputs, scored, method, n,
                                                progress, prompts)
                    except Diverged as e:
                        log.info("tune %s %s %d-way %s %s seed %d: diverged at test time (%s)",
                                 ds.name, method, n, train_point, test_point, seed, e)
                        diverged[k] = "meta-test"
                        continue
                    accs[k].setdefault(seed, []).append(row.acc_mean)
                    dev_tasks[k] = row.n_tasks
                    log.info("tune %s %s %d-way %s %s seed %d: dev %.3f", ds.name, method, n,
                             train_point, test_point, seed, row.acc_mean)
    pretrained.restore()
    return [{"train": train_point, "metatest": test_point, "ways": sizes,
             **({"dev_acc": None, "diverged": diverged[k]} if k in diverged else
                _dev_acc(accs[k])),
             **({"collapsed": sorted(collapsed)} if collapsed and k not in diverged else {}),
             **({"dev_tasks": dev_tasks[k]} if k in dev_tasks else {})}
            for k, test_point in enumerate(tests)]


def _dev_acc(by_seed: dict[int, list[float]]) -> dict:
    """A point's dev accuracy: the mean over tuned sizes, then over tune seeds (each seed's own
    kept where there are several, to show how stable the point is)."""
    means = {seed: float(sum(a) / len(a)) for seed, a in by_seed.items()}
    out = {"dev_acc": float(sum(means.values()) / len(means))}
    if len(means) > 1:
        out["dev_acc_by_seed"] = {str(seed): acc for seed, acc in means.items()}
    return out


def _config(exp, ds, method: str, root: str, extra: dict, ways: int | None = None,
            seed: int | None = None) -> Config:
    """A dev run's config: the experiment's for the method, then tune.settings and the grid
    point, a tune seed (default: the first), the dev split."""
    from mamf.config import deep_merge

    over = deep_merge(deep_merge(exp.tune.settings, extra), {"metatest": {"split": "dev"}})
    return run_config(exp, ds, method, exp.tune.seeds[0] if seed is None else seed, root,
                      ways=ways, extra=over)
