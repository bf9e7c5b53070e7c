"""Every method against one reference method (`mamf report DIR --reference METHOD`): paired over
the cells each pair shares, as seed-level estimates, Holm-adjusted over the whole table."""

from __future__ import annotations

from mamf import stats
from mamf.report.common import holm_line, in_order, label, md
from mamf.report.compare import ordered, paired
from mamf.results import Row
from mamf.system.errors import MamfError

DEFAULT_REFERENCES = ("classical", "zeroshot")


def default_reference(rows: list[Row]) -> str | None:
    """Classical fine-tuning where it ran, else zero-shot, else none."""
    present = {r.method for r in rows}
    return next((m for m in DEFAULT_REFERENCES if m in present), None)


def check_reference(rows: list[Row], reference: str) -> None:
    present = {r.method for r in rows}
    if reference not in present:
        raise MamfError(f"--reference {reference!r} has no rows here; the methods present are "
                        f"{', '.join(in_order(present))}")


def reference_section(rows: list[Row], reference: str | None = None) -> list[str]:
    """Markdown lines of the table; none when there is no reference or nothing to pair."""
    reference = reference or default_reference(rows)
    if reference is None:
        return []
    found = []
    for d in ordered(rows)[0]:
        mine = [r for r in rows if r.dataset_name == d]
        for m in in_order({r.method for r in mine} - {reference}):
            e = paired(mine, m, reference).get(d)
            if e is not None:
                found.append((d, m, e))
    if not found:
        return []
    lines = [f"## Every method against {label(reference)}", "",
             f"Each method's accuracy minus {label(reference)}'s, paired over the test tasks of "
             f"the cells (ways, shots, seed, split) the two share. *holds*: the method beats "
             f"{label(reference)}; *does not hold*: {label(reference)} is better.", "",
             f"| dataset | method | method − {md(label(reference))} | seeds | tasks | verdict |",
             "|---|---|---|---|---|---|"]
    estimates = [e for _, _, e in found]
    for (d, m, e), v in zip(found, stats.verdicts(estimates)):
        lines.append(f"| {md(d)} | {md(label(m))} | {stats.interval(e, signed=True)} | {e.seeds} "
                     f"| {e.tasks} | {stats.worded(v, e)} |")
    return lines + ["", stats.coverage_line(estimates), holm_line(len(estimates))]
