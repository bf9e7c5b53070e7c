"""Which rows are compared with which, and their seed-level estimates.

Every comparison is made over *cells*, (dataset, ways, shots, seed, split): a method's figure on
a dataset pools its test tasks over the cells that every compared method has, so no method is
credited or blamed for task sizes or seeds another did not run. Rows outside those cells are
set apart, with the reason. Tasks are grouped by seed, the unit of replication
(`mamf.stats.estimate`): two rows of one seed in one cell are never counted as two seeds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from mamf import stats
from mamf.report.common import in_order, label, labels
from mamf.results import RowKey, dataset_name, row_key
from mamf.stats import Estimate

Cell = RowKey  # the key of the test tasks: what two methods must share to be compared
NOT_IN_CELL = ("method", "model", "run", "protocol", "queries", "sampler", "alpha")
"""What rows of one cell may differ by: the method (and its sampler and mix) is what is
compared; a second row of one method in a cell (another model, run or protocol) is set apart."""


def cell_of(row: dict) -> Cell:
    """The cell a row was measured in: its key without NOT_IN_CELL, i.e. (dataset, ways, shots,
    seed, split), whose test tasks are the same for every method."""
    return row_key(row).without(*NOT_IN_CELL)


@dataclass
class Comparison:
    """Rows split into those compared (each dataset over the cells all its compared methods
    have, one row per method and cell) and those left apart, each with the reason why."""

    compared: list[dict]
    apart: list[tuple[dict, str]]


def one_per_cell(rows: list[dict]) -> tuple[dict[tuple[Cell, str], dict], list[tuple[dict, str]]]:
    """(cell, method) -> its first row; a second row of a method in a cell (another model, run
    or split file) is set apart rather than pooled, so no task or seed is counted twice."""
    index: dict[tuple[Cell, str], dict] = {}
    apart = []
    for r in rows:
        key = (cell_of(r), r["method"])
        if key in index:
            first = index[key]
            other = [f"{f} {r.get(f)}" for f in ("model", "run", "protocol", "queries",
                                                  "split_file_sha256") if r.get(f) != first.get(f)]
            apart.append((r, f"a second {label(r['method'])} row for this cell"
                          + (f" ({', '.join(other)})" if other else "")))
        else:
            index[key] = r
    return index, apart


def compare(rows: list[dict], methods: Sequence[str] | None = None) -> Comparison:
    """Keep, per dataset, the rows of `methods` (default: every method the dataset has) in the
    cells that all of those methods have; set the other rows of those methods apart."""
    index, apart = one_per_cell(rows)
    have: dict[str, dict[str, set]] = {}
    for c, m in index:
        have.setdefault(c.dataset, {}).setdefault(m, set()).add(c)
    compared = []
    for (c, m), r in index.items():
        wanted = list(methods) if methods is not None else in_order(have[c.dataset])
        if m not in wanted:
            continue
        holders = [x for x in wanted if c in have[c.dataset].get(x, ())]
        if len(holders) == len(wanted):
            compared.append(r)
        else:
            apart.append((r, f"only {labels(holders)} {'has' if len(holders) == 1 else 'have'} "
                          "this cell"))
    if methods is not None:
        apart = [(r, why) for r, why in apart if r["method"] in methods]
    return Comparison(compared, apart)


def by_seed(rows: list[dict]) -> dict[int, list[float]]:
    """seed -> the task accuracies of `rows` (one method's, one row per cell), in row order."""
    out: dict[int, list[float]] = OrderedDict()
    for r in rows:
        out.setdefault(r["seed"], []).extend(r["task_accs"])
    return out


def pooled(rows: list[dict]) -> dict[tuple[str, str], Estimate]:
    """(dataset, method) -> the seed-level estimate over all their test tasks."""
    groups: dict[tuple, list[dict]] = OrderedDict()
    for r in rows:
        groups.setdefault((dataset_name(r), r["method"]), []).append(r)
    return {key: stats.estimate(by_seed(rs)) for key, rs in groups.items()}


def paired(rows: list[dict], a: str, b: str) -> dict[str, Estimate]:
    """Per dataset: `a` minus `b` over the same test tasks, i.e. over the cells both have (paired
    by cell and task order), as a seed-level estimate."""
    return {d: stats.paired(xs, ys) for d, (xs, ys) in paired_tasks(rows, a, b).items()}


def paired_tasks(rows: list[dict], a: str, b: str) -> dict[str, tuple[dict, dict]]:
    """Per dataset: seed -> `a`'s and seed -> `b`'s task accuracies over the cells both have, in
    the same task order (what `paired` estimates from)."""
    index, _ = one_per_cell(rows)
    xs: dict[str, dict[int, list[float]]] = OrderedDict()
    ys: dict[str, dict[int, list[float]]] = OrderedDict()
    for (c, m), ra in index.items():
        rb = index.get((c, b)) if m == a else None
        if rb is None or len(rb["task_accs"]) != len(ra["task_accs"]):
            continue
        xs.setdefault(c.dataset, {}).setdefault(c.seed, []).extend(ra["task_accs"])
        ys.setdefault(c.dataset, {}).setdefault(c.seed, []).extend(rb["task_accs"])
    return {d: (xs[d], ys[d]) for d in xs}


def ordered(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The datasets in row order and the methods in table order."""
    datasets = list(OrderedDict.fromkeys(dataset_name(r) for r in rows))
    return datasets, in_order({r["method"] for r in rows})
