"""The main accuracy table, what it compares, the rows it leaves out, and the settings line."""

from __future__ import annotations

from collections import OrderedDict

from mamf import protocols, stats
from mamf.report.common import label, md, method_order, numbers, rank
from mamf.report.compare import Headline, by_seed, compare, headline, one_per_cell, ordered
from mamf.report.export import Grid
from mamf.results import Row


def accuracy_grid(rows: list[Row]) -> Grid:
    """The accuracy table: one row per dataset and setting, one column per method, mean ± 95 %
    interval over the cells every method of the dataset has, and the seeds and tasks the
    interval covers. A setting (protocol, ways, shots) that differs within a dataset gets a
    column, and each of its values a row: no number pools two of them (`compare.headline`).
    Behind each method's entry: the rows it pools (for tables/accuracy.csv)."""
    table = headline(rows)
    est = table.estimates()
    methods = ordered(rows)[1]
    head = ["dataset", *table.varying, *(label(m) for m in methods), "seeds", "tasks"]
    body, behind = [], []
    for (d, s), by_method in table.entries.items():
        mine = [est[(d, s, m)] for m in methods if m in by_method]
        shown = [stats.interval(est[(d, s, m)]) if m in by_method else "–" for m in methods]
        seeds = numbers(e.seeds for e in mine) if mine else "–"
        tasks = numbers(e.tasks for e in mine) if mine else "–"
        where = [str(v) for v in s] or ["–"] * len(table.varying)  # "–": no compared row
        body.append([d, *where, *shown, seeds, tasks])
        first = 1 + len(table.varying)
        behind.append({first + i: by_method[m] for i, m in enumerate(methods) if m in by_method})
    return Grid(head, body, behind)


def _entry_name(table: Headline, d: str, s: tuple) -> str:
    """A table entry as text: the dataset, and the setting where one varies ('counting, 4-way')."""
    return f"{d}, {table.name(s)}" if s else d


def grid_markdown(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(md(h) for h in head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(md(c) for c in row) + " |" for row in body])


def accuracy_table(rows: list[Row]) -> str:
    """The accuracy table (`accuracy_grid`) in markdown."""
    grid = accuracy_grid(rows)
    return grid_markdown(grid.head, grid.body)


def accuracy_notes(rows: list[Row]) -> list[str]:
    """What the accuracy table's intervals cover, and which of its entries are degenerate."""
    table = headline(rows)
    est = table.estimates()
    lines = [stats.coverage_line(list(est.values()))]
    flat = [(d, s, m, e) for (d, s, m), e in est.items() if not e.spread and e.tasks > 1]
    if flat:
        what = []
        for d, s, m, e in flat:
            ways = {r.ways for r in table.entries[(d, s)][m]}
            chance = len(ways) == 1 and abs(e.mean - 1 / next(iter(ways))) < 1e-9
            what.append(f"{label(m)} on {_entry_name(table, d, s)} ({e.mean:.3f} in every task"
                        + (", which is chance: one class predicted for every query image, "
                           "most likely" if chance else "") + ")")
        lines.append("*No spread*: every test task scored the same, so no interval can be "
                     f"measured and none is shown: {'; '.join(what)}.")
    return [line for line in lines if line]


def _describe_cells(rows: list[Row]) -> str:
    seeds = sorted({r.seed for r in rows})
    tasks = sorted({sum(len(r.task_accs) for r in rows if r.method == m)
                    for m in {r.method for r in rows}})
    counts = str(tasks[0]) if len(tasks) == 1 else f"{tasks[0]} to {tasks[-1]}"
    return (f"{numbers(r.ways for r in rows)}-way, {numbers(r.shots for r in rows)}-shot, "
            f"seed{'s' if len(seeds) > 1 else ''} {numbers(seeds)}, "
            f"{', '.join(sorted({r.split for r in rows}))} split, {counts} tasks per method")


def comparison_note(rows: list[Row]) -> str:
    """What the table compares, when some rows are left out of it; '' when none is."""
    comp = compare(rows)
    if not comp.apart:
        return ""
    datasets, _ = ordered(rows)
    left = {r.dataset_name for r, _ in comp.apart}
    parts = []
    for d in datasets:
        if d not in left:
            continue
        mine = [r for r in comp.compared if r.dataset_name == d]
        parts.append(f"{d}: {_describe_cells(mine)}" if mine
                     else f"{d}: none, its methods share no cell")
    return ("Each dataset is compared only over the cells (ways, shots, seed, split) that all its "
            f"methods have: {'; '.join(parts)}. The {len(comp.apart)} row(s) outside them are "
            "listed under *Not compared*.")


def not_compared_markdown(rows: list[Row]) -> str:
    """The rows left out of every comparison, grouped by dataset, method and cell; '' if none."""
    groups: dict[tuple, list[Row]] = OrderedDict()
    for r, why in compare(rows).apart:
        key = (r.dataset_name, rank(r.method), r.ways, r.shots, r.split, why)
        groups.setdefault(key, []).append(r)
    if not groups:
        return ""
    lines = ["## Not compared", "",
             "These rows have no counterpart in every other method of their dataset (or repeat "
             "a method's cell), so the table, the summary figure and the claims leave them out:",
             "", "| dataset | method | ways | shots | seeds | split | tasks | accuracy | why |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (d, m, ways, shots, split, why), rs in sorted(groups.items(), key=lambda kv: kv[0][:5]):
        e = stats.estimate(by_seed(rs)) if len({r.seed for r in rs}) == len(rs) \
            else stats.estimate({0: [a for r in rs for a in r.task_accs]})
        lines.append(f"| {md(d)} | {label(m[1] or method_order()[m[0]])} | {ways} | {shots} | "
                     f"{numbers(r.seed for r in rs)} | {md(split)} | {e.tasks} | "
                     f"{stats.interval(e)} | {md(why)} |")
    return "\n".join(lines)


def _task_counts(rows: list[Row]) -> str:
    """Tasks per seed (and split) of one method's rows, a cell counted once: '95', '10 to 95'."""
    per: dict[tuple, int] = {}
    for r in one_per_cell(rows)[0].values():
        per[(r.seed, r.split)] = per.get((r.seed, r.split), 0) + r.n_tasks
    counts = sorted(set(per.values()))
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def settings_line(rows: list[Row]) -> str:
    """Per dataset and protocol: task sizes, shots and tasks per seed, method by method where
    the methods differ (tasks are never pooled across protocols)."""
    parts = []
    datasets, methods = ordered(rows)
    for d in datasets:
        seen = list(OrderedDict.fromkeys(r.protocol for r in rows if r.dataset_name == d))
        for protocol in seen:
            mine = [r for r in rows if r.dataset_name == d and r.protocol == protocol]
            parts.append(f"{d}: {protocol}{_shapes(mine, methods)}")
    return "; ".join(parts)


def _shapes(mine: list[Row], methods: list[str]) -> str:
    shapes = OrderedDict()
    for m in methods:
        own = [r for r in mine if r.method == m]
        if own:
            shapes[m] = (numbers(r.ways for r in own), numbers(r.shots for r in own),
                         _task_counts(own), numbers(r.seed for r in own))
    if len(set(shapes.values())) == 1:
        ways, shots, tasks, _ = next(iter(shapes.values()))
        return f", {ways}-way, {shots}-shot, {tasks} tasks per method and seed"
    shots = {s[1] for s in shapes.values()}
    seeds = {s[3] for s in shapes.values()}
    each = []
    for m, (ways, own_shots, tasks, own_seeds) in shapes.items():
        own = f" {own_shots}-shot" if len(shots) > 1 else ""
        seeded = (f" (seed{'s' if ',' in own_seeds else ''} {own_seeds})"
                  if len(seeds) > 1 else "")
        each.append(f"{label(m)} at {ways}-way{own} with {tasks} tasks per seed{seeded}")
    common = f", {next(iter(shots))}-shot" if len(shots) == 1 else ""
    return f"{common}, {', '.join(each[:-1])} and {each[-1]}"


def training_line(rows: list[Row]) -> str:
    """Per dataset, each trained method's optimiser updates and back-propagated images per run
    and its budget (docs/method.md, "Budgets"); '' when no row was trained. Rows written before
    budgets were recorded lack the counts: their runs followed each method's native schedule."""
    parts, old = [], False
    datasets, methods = ordered(rows)
    for d in datasets:
        each = []
        for m in methods:
            own = [r for r in rows if r.dataset_name == d and r.method == m and r.trained]
            if not own:
                continue
            steps = [r.train_steps for r in own if r.train_steps is not None]
            images = [r.train_images for r in own if r.train_images is not None]
            budgets = {r.train_budget or "native*" for r in own}
            old |= "native*" in budgets or len(images) < len(own)
            counts = [f"{_span(steps)} updates" if steps else "updates not recorded",
                      f"{_span(images)} images" if len(images) == len(own) else
                      (f"{_span(images)} images where recorded" if images
                       else "images not recorded")]
            each.append(f"{label(m)} {' and '.join(counts)} ({', '.join(sorted(budgets))})")
        if each:
            parts.append(f"{d}: {', '.join(each)}")
    if not parts:
        return ""
    note = (" (*: rows written before budgets were recorded, trained on each method's native "
            "schedule; their images are unknown)") if old else ""
    return "; ".join(parts) + note


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,} to {high:,}"


def fixed_images_note(rows: list[Row]) -> str:
    """Where test tasks re-score one fixed set of test images, what an interval covers."""
    fixed = sorted(p for p in {r.protocol for r in rows} if protocols.get(p).fixed_test_images)
    if not fixed:
        return ""
    return (f"Under the {', '.join(fixed)} protocol{'s' if len(fixed) > 1 else ''} every test "
            "task draws its images from one fixed test split, so the same query images are "
            "scored again in many tasks: the intervals cover training seeds and the draw of "
            "tasks, conditional on these test images, not a new draw of test images.")
