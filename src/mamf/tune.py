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
from mamf.config import Config
from mamf.errors import Diverged, MamfError
from mamf.experiment_file import dataset_root, run_config
from mamf.io import atomic_write_text
from mamf.tune_spec import TuneSpec, nested

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
    return data


CHANCE_MARGIN = 0.02  # dev accuracy within this of 1/n at every test-time point: at chance


def _seed_accs(score: dict) -> dict[str, float]:
    return score.get("dev_acc_by_seed") or {"": score["dev_acc"]}


def collapsed_seeds(scores: list[dict], train_point: dict) -> set[str]:
    """The tune seeds on which the training at `train_point` collapsed: every test-time point
    scored on its weights is at chance (within CHANCE_MARGIN of 1/n), so no adaptation rescued
    it. Read from the scores, so a `tune.json` written before this rule is judged alike. (A
    training's loss cannot tell: where the loss spreads over many classes, as classical
    fine-tuning's over 1,122 emoji, the pretrained model's first loss is already near ln k.)"""
    same = [s for s in scores if s["train"] == train_point and s["dev_acc"] is not None]
    if not same:
        return set()
    chance = float(np.mean([1 / n for n in same[0]["ways"]]))
    seeds = set().union(*(_seed_accs(s) for s in same))
    return {seed for seed in seeds
            if all(_seed_accs(s).get(seed, 1.0) <= chance + CHANCE_MARGIN for s in same)}


def eligible(scores: list[dict]) -> list[dict]:
    """The points that may be chosen: neither diverged (dev_acc null) nor collapsed on any tune
    seed (its training's loss fell to chance, `mamf.chance.collapsed`, or `collapsed_seeds`),
    the same rule for every method."""
    return [s for s in scores if s["dev_acc"] is not None and not s.get("collapsed")
            and not collapsed_seeds(scores, s["train"])]


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
    from mamf.run import RESULTS

    if not (out / RESULTS).is_file():
        return set()
    return {r.get("experiment_dataset") or r["dataset"] for r in read_rows(out / RESULTS)}


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
    from mamf import samplers
    from mamf.metatest import WeightSnapshot
    from mamf.run import evaluate_prepared, fresh_start, prepare, ways_list
    from mamf.training import train

    spec: TuneSpec = exp.tune
    kind = registry.method_class(method)
    extra = nested(train_point)
    if _prepared.get("key") != (exp.name, ds.name, root):
        _prepared.clear()
        config = _config(exp, ds, method, root, extra)
        model, dataset, inputs = prepare(config)
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
        for group in ([[n] for n in sizes] if kind.trains_per_ways else [sizes]):
            config = _config(exp, ds, method, root, extra, ways=group[0], seed=seed)
            fresh_start(model, inputs, pretrained, config, kind.trains)
            if kind.trains:
                try:
                    result = train(model, inputs, dataset, config, progress)
                    if result.collapsed:  # one rule for every method (`mamf.chance`)
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
