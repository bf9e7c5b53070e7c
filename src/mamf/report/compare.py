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
from mamf.results import Row, RowKey
from mamf.stats import Estimate

Cell = RowKey  # the key of the test tasks: what two methods must share to be compared
NOT_IN_CELL = ("method", "model", "run", "protocol", "queries", "sampler", "alpha")
"""What rows of one cell may differ by: the method (and its sampler and mix) is what is
compared; a second row of one method in a cell (another model, run or protocol) is set apart."""


def cell_of(row: Row) -> Cell:
    """The cell a row was measured in: its key without NOT_IN_CELL, i.e. (dataset, ways, shots,
    seed, split), whose test tasks are the same for every method."""
    return row.key.without(*NOT_IN_CELL)


@dataclass
class Comparison:
    """Rows split into those compared (each dataset over the cells all its compared methods
    have, one row per method and cell) and those left apart, each with the reason why."""

    compared: list[Row]
    apart: list[tuple[Row, str]]


SET_APART_BY = ("model", "run", "protocol", "queries", "split_file_sha256")
"""What a second row of one method in a cell is told apart from the first by, in its reason."""


def one_per_cell(rows: list[Row]) -> tuple[dict[tuple[Cell, str], Row], list[tuple[Row, str]]]:
    """(cell, method) -> its first row; a second row of a method in a cell (another model, run
    or split file) is set apart rather than pooled, so no task or seed is counted twice."""
    index: dict[tuple[Cell, str], Row] = {}
    apart = []
    for r in rows:
        key = (cell_of(r), r.method)
        if key in index:
            first = index[key]
            other = [f"{f} {getattr(r, f)}" for f in SET_APART_BY
                     if getattr(r, f) != getattr(first, f)]
            apart.append((r, f"a second {label(r.method)} row for this cell"
                          + (f" ({', '.join(other)})" if other else "")))
        else:
            index[key] = r
    return index, apart


def compare(rows: list[Row], methods: Sequence[str] | None = None) -> Comparison:
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
        apart = [(r, why) for r, why in apart if r.method in methods]
    return Comparison(compared, apart)


def by_seed(rows: list[Row]) -> dict[int, list[float]]:
    """seed -> the task accuracies of `rows` (one method's, one row per cell), in row order."""
    out: dict[int, list[float]] = OrderedDict()
    for r in rows:
        out.setdefault(r.seed, []).extend(r.task_accs)
    return out


def method_estimates(rows: list[Row]) -> dict[tuple[str, str], Estimate]:
    """(dataset, method) -> the seed-level estimate over all their test tasks."""
    groups: dict[tuple, list[Row]] = OrderedDict()
    for r in rows:
        groups.setdefault((r.dataset_name, r.method), []).append(r)
    return {key: stats.estimate(by_seed(rs)) for key, rs in groups.items()}


def paired(rows: list[Row], a: str, b: str) -> dict[str, Estimate]:
    """Per dataset: `a` minus `b` over the same test tasks, i.e. over the cells both have (paired
    by cell and task order), as a seed-level estimate."""
    return {d: stats.paired(xs, ys) for d, (xs, ys) in paired_tasks(rows, a, b).items()}


def paired_tasks(rows: list[Row], a: str, b: str) -> dict[str, tuple[dict, dict]]:
    """Per dataset: seed -> `a`'s and seed -> `b`'s task accuracies over the cells both have, in
    the same task order (what `paired` estimates from)."""
    index, _ = one_per_cell(rows)
    xs: dict[str, dict[int, list[float]]] = OrderedDict()
    ys: dict[str, dict[int, list[float]]] = OrderedDict()
    for (c, m), ra in index.items():
        rb = index.get((c, b)) if m == a else None
        if rb is None or len(rb.task_accs) != len(ra.task_accs):
            continue
        xs.setdefault(c.dataset, {}).setdefault(c.seed, []).extend(ra.task_accs)
        ys.setdefault(c.dataset, {}).setdefault(c.seed, []).extend(rb.task_accs)
    return {d: (xs[d], ys[d]) for d in xs}


def ordered(rows: list[Row]) -> tuple[list[str], list[str]]:
    """The datasets in row order and the methods in table order."""
    datasets = list(OrderedDict.fromkeys(r.dataset_name for r in rows))
    return datasets, in_order({r.method for r in rows})


SETTING = ("protocol", "ways", "shots")
"""What a headline number never pools over: rows of one dataset at another protocol, task size
or shot count are other settings, each with its own entry in the accuracy table and bar in the
summary figure (the comparison itself still keeps the cells every method has)."""


@dataclass
class Headline:
    """The accuracy table's entries: per dataset and setting (the values of `varying`, the
    SETTING fields that take two values or more within some dataset), each method's compared
    rows. A dataset with no compared row has one entry with no setting and no rows."""

    varying: tuple[str, ...]
    entries: dict[tuple[str, tuple], dict[str, list[Row]]]

    def name(self, setting: tuple) -> str:
        """A setting as text: '4-way, 1-shot', 'coop, 16-shot'; '–' for none."""
        return ", ".join(f"{v}-{f.rstrip('s')}" if f in ("ways", "shots") else str(v)
                         for f, v in zip(self.varying, setting)) or "–"

    def estimates(self) -> dict[tuple[str, tuple, str], Estimate]:
        """(dataset, setting, method) -> the seed-level estimate over its rows' test tasks."""
        return {(d, s, m): stats.estimate(by_seed(rs))
                for (d, s), by_method in self.entries.items() for m, rs in by_method.items()}


def headline(rows: list[Row]) -> Headline:
    """The compared rows of `rows` (`compare`) grouped into the accuracy table's entries."""
    compared = compare(rows).compared
    datasets, methods = ordered(rows)
    values = {f: {} for f in SETTING}
    for r in compared:
        for f in SETTING:
            values[f].setdefault(r.dataset_name, set()).add(getattr(r, f))
    varying = tuple(f for f in SETTING if any(len(v) > 1 for v in values[f].values()))
    protocol_order = list(OrderedDict.fromkeys(r.protocol for r in compared))

    def setting(r: Row) -> tuple:
        return tuple(getattr(r, f) for f in varying)

    def order(s: tuple) -> tuple:
        return tuple(protocol_order.index(v) if f == "protocol" else v
                     for f, v in zip(varying, s))

    entries: dict[tuple[str, tuple], dict[str, list[Row]]] = {}
    for d in datasets:
        mine = [r for r in compared if r.dataset_name == d]
        if not mine:
            entries[(d, ())] = {}
        for s in sorted({setting(r) for r in mine}, key=order):
            entries[(d, s)] = {m: rs for m in methods
                               if (rs := [r for r in mine if r.method == m and setting(r) == s])}
    return Headline(varying, entries)
