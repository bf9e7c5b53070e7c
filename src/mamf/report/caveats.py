"""The report's caveats, written from the files so that no README has to restate them by hand:
how each tuned entry chose (grid, value, edges, margin over the runner-up, dev tasks, tune
seeds), which trainings ended at chance, and where compared methods differ in updates, images
or test-time adaptation. They follow the declared hypotheses, before any number."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from mamf.config import load_yaml
from mamf.report.common import in_order, label, md, numbers
from mamf.report.files import grid_config, row_config
from mamf.results import Row
from mamf.system.errors import MamfError

TUNE_FILE = "tune.json"
THIN = 0.005  # a choice that wins by this much or less is a tie broken by dev-task noise
CHANCE_MARGIN = 0.01  # a trained row within this of 1/n accuracy, where it recorded no loss flag


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _grid_text(grid: dict) -> str:
    return " × ".join(f"{k} {_value(v[0])}..{_value(v[-1])} ({len(v)})" if len(v) > 1
                      else f"{k} {_value(v[0])}" for k, v in grid.items())


def edges(grid: dict, chosen: dict) -> list[str]:
    """The keys whose chosen value is the first or last of a grid of 2 or more values."""
    found = []
    for key, values in grid.items():
        if len(values) > 1 and key in chosen and chosen[key] in (values[0], values[-1]):
            found.append(f"{key} {'bottom' if chosen[key] == values[0] else 'top'}")
    return found


def margin(scores: list[Row]) -> float | None:
    """Best minus runner-up dev accuracy among the points that could be chosen."""
    from mamf.runs.tune_rule import eligible  # the rule tuning chose by

    accs = sorted((s["dev_acc"] for s in eligible(scores)), reverse=True)
    return accs[0] - accs[1] if len(accs) > 1 else None


def _collapsed(scores: list[Row]) -> int:
    """How many scored points tuning may not choose because their training collapsed."""
    from mamf.runs.tune_rule import eligible

    kept = eligible(scores)
    return sum(1 for s in scores if s["dev_acc"] is not None and s not in kept)


def _tune_seeds(entry: dict, state: dict) -> str:
    seeds = {str(k) for s in entry["scores"] for k in s.get("dev_acc_by_seed", {})}
    if not seeds:
        seed = state.get("seed")
        seeds = {str(x) for x in (seed if isinstance(seed, list) else [seed])}
    return f"{len(seeds)} ({', '.join(sorted(seeds))})"


def tuning_lines(folder: Path | None) -> list[str]:
    """The tuning caveats of `folder/tune.json`; none without one."""
    path = Path(folder) / TUNE_FILE if folder is not None else None
    if path is None or not path.is_file():
        return []
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        entries = state["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MamfError(f"{path} is unreadable: the caveats cannot be written") from None
    lines = ["**Tuning** (tune.json): each entry's grid, the value dev chose, whether it lies "
             "on an edge of the grid, its margin over the runner-up (points that diverged or "
             "collapsed excluded), the dev tasks each point was scored on and the tune seeds.",
             "", "| entry | grid | chosen | on an edge | margin | dev tasks | tune seeds | "
             "collapsed points |", "|---|---|---|---|---|---|---|---|"]
    edged = thin = told = 0
    for key, entry in entries.items():
        chosen = entry.get("chosen")
        if not chosen:
            continue
        told += 1
        on = edges(entry["grid"], chosen)
        m = margin(entry["scores"])
        edged += bool(on)
        thin += m is not None and round(m, 3) <= THIN  # as the table shows it
        tasks = sorted({s["dev_tasks"] for s in entry["scores"] if "dev_tasks" in s})
        lost = _collapsed(entry["scores"])
        lines.append(f"| {md(key)} | {_grid_text(entry['grid'])} | "
                     f"{', '.join(f'{k} {_value(v)}' for k, v in chosen.items())} | "
                     f"{', '.join(on) or 'no'} | "
                     f"{'–' if m is None else f'{m:+.3f}'} | "
                     f"{numbers(tasks) if tasks else 'not recorded'} | "
                     f"{_tune_seeds(entry, state)} | {lost} |")
    lines += ["", f"{edged} of {told} entries chose a value on an edge of their grid; {thin} won "
              f"by {THIN} or less (a tie that dev-task noise breaks)."]
    why = _file_reasons(folder)
    if why.get("asymmetric"):
        lines.append(f"Tuning is **not symmetric** here, as the file says: {md(why['asymmetric'])}")
    for earlier in state.get("before_retune", []):
        lines.append(f"Re-tuned after test rows existed ({len(earlier['entries'])} entries "
                     f"replaced, every method alike): {md(state.get('retune'))}")
    return [*lines, ""]


def _file_reasons(folder: Path) -> dict:
    path = Path(folder) / "experiment.yaml"
    try:
        tune = load_yaml(path).get("tune") or {} if path.is_file() else {}
    except (MamfError, AttributeError):
        return {}
    return tune if isinstance(tune, dict) else {}


def _trainings(rows: list[Row]) -> dict[tuple, dict]:
    """(method, dataset, ways, seed) -> one row of that training (trained rows only)."""
    found: dict[tuple, dict] = OrderedDict()
    for r in rows:
        if r.train_steps is not None:
            found.setdefault((r.method, r.dataset_name, r.ways, r.seed), r)
    return found


def at_chance(row: Row) -> bool:
    """The training ended at chance: its loss said so (`train_at_chance`), or, for rows from
    before rows recorded that, its accuracy is within CHANCE_MARGIN of 1/n."""
    if row.train_at_chance is not None:
        return bool(row.train_at_chance)
    return row.acc_mean is not None and row.acc_mean <= 1 / row.ways + CHANCE_MARGIN


def chance_lines(rows: list[Row]) -> list[str]:
    by_size: dict[tuple, list] = OrderedDict()  # (method, dataset, ways) -> (seed, at chance)
    for (m, d, n, s), r in _trainings(rows).items():
        by_size.setdefault((m, d, n), []).append((s, at_chance(r)))
    bad = {k: v for k, v in by_size.items() if any(c for _, c in v)}
    if not by_size:
        return []
    if not bad:
        return [f"**Trainings at chance**: none of the {sum(map(len, by_size.values()))} "
                "trainings ended at chance.", ""]
    lines = ["**Trainings at chance** (the loss ended at a uniform guess; rows from before "
             "rows recorded it: accuracy within 0.01 of 1/n), per method and cell:", "",
             "| method | dataset | ways | seeds at chance | of |", "|---|---|---|---|---|"]
    for (m, d, n), v in bad.items():
        lines.append(f"| {label(m)} | {md(d)} | {n} | {numbers(s for s, c in v if c)} | "
                     f"{len(v)} |")
    return [*lines, ""]


def _adaptation(method: str, config: dict | None) -> str:
    from mamf.methods.presentation import Presentation, of

    cls = of(method) or Presentation(label=method, description="")
    if cls.adapt_rate is None or config is None:
        return "none" if cls.adapt_rate is None else "not recorded"
    section, key = cls.adapt_rate.split(".", 1)
    rate = (config.get(section) or {}).get(key)
    epochs = None
    if cls.adapt_epochs:
        s, k = cls.adapt_epochs.split(".", 1)
        epochs = (config.get(s) or {}).get(k)
    return f"{cls.adapt_optimizer} {cls.adapt_rate} {_value(rate)}" + \
        (f", {epochs} epoch(s)" if epochs is not None else "")


def budget_lines(rows: list[Row], folder: Path | None) -> list[str]:
    """Per dataset, where the compared methods differ in updates, images or test-time
    adaptation."""
    lines = []
    for d in OrderedDict.fromkeys(r.dataset_name for r in rows):
        mine = [r for r in rows if r.dataset_name == d]
        per: dict[str, dict[str, set]] = {}
        for m in in_order({r.method for r in mine}):
            rs = [r for r in mine if r.method == m]
            config = row_config(rs[0], folder) or grid_config(rs[0], folder)
            per[m] = {"updates": {r.train_steps for r in rs},
                      "images": {r.train_images for r in rs},
                      "test-time adaptation": {_adaptation(m, config)}}
        # zero-shot neither trains nor adapts by design: compared are those that do
        trained = {m: v for m, v in per.items() if v["updates"] != {None}}
        adapting = {m: v for m, v in per.items() if v["test-time adaptation"] != {"none"}}
        differ = [k for k in ("updates", "images", "test-time adaptation")
                  if len({frozenset(v[k]) for v in (trained if k != "test-time adaptation"
                                                    else adapting).values()}) > 1]
        if not differ:
            continue
        parts = []
        for m, v in per.items():
            if m not in trained and m not in adapting:
                continue
            shown = [f"{k} {numbers(x for x in v[k] if x is not None) or '–'}"
                     if k != "test-time adaptation" else f"{next(iter(v[k]))}" for k in differ]
            parts.append(f"{label(m)}: {'; '.join(shown)}")
        lines.append(f"- {md(d)}: the methods differ in {', '.join(differ)}. "
                     + " | ".join(parts))
    if not lines:
        return []
    return ["**What differs between the compared methods** besides the method (updates and "
            "images of training, test-time adaptation):", "", *lines, ""]


def caveats_section(rows: list[Row], folder: Path | None) -> list[str]:
    """The section's markdown lines (none when there is nothing to say)."""
    body = tuning_lines(folder) + chance_lines(rows) + budget_lines(rows, folder)
    return ["## Caveats, from the files", "", *body] if body else []
