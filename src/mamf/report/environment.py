"""The report's "Software and environment" lines: the versions, commit and machine the rows
were measured on, and the fields in which the compared rows differ (a change of torch or of the
thread count moves the last digits on a CPU, so a reader should know when rows mix them)."""

from __future__ import annotations

from collections import OrderedDict

from mamf.results import ENVIRONMENT_FIELDS, Row

NAMES = {"mamf": "mamf", "mamf_commit": "commit", "torch": "torch",
         "transformers": "transformers", "peft": "peft", "onnxruntime": "onnxruntime",
         "python": "Python", "device": "device", "threads": "threads",
         "denormals": "subnormals", "date": "date"}


def _value(row: Row, field: str):
    value = row.environment.get(field)
    if field == "date" and isinstance(value, str):
        return value[:10]  # rows of one day are one date; a timestamp always differs
    return value


def values(rows: list[Row], field: str) -> list:
    """The distinct recorded values of `field`, in row order (None: absent in some rows)."""
    return list(OrderedDict.fromkeys(_value(r, field) for r in rows))


def differing(rows: list[Row]) -> list[str]:
    """The environment fields whose recorded values differ between `rows` (a field recorded in
    some rows only counts as differing; one recorded in none does not)."""
    return [f for f in ENVIRONMENT_FIELDS if len(values(rows, f)) > 1]


def environment_lines(rows: list[Row], compared: list[Row]) -> list[str]:
    """The section's markdown: what was recorded, and where the compared rows differ."""
    lines = ["## Software and environment", ""]
    recorded = [f for f in ENVIRONMENT_FIELDS if any(r.environment.get(f) is not None for r in rows)]
    if not recorded:
        return lines + ["These rows record no versions, commit or machine (they were written "
                        "before rows recorded their environment); only torch or the host may be "
                        "named in them.", ""]
    parts = []
    for f in recorded:
        shown = [("not recorded" if v is None else str(v)) for v in values(rows, f)]
        parts.append(f"{NAMES[f]} {', '.join(shown)}")
    lines += ["Measured with " + "; ".join(parts) + ".", ""]
    fields = differing(compared)
    if fields:
        lines += ["**The compared rows differ in " + ", ".join(NAMES[f] for f in fields)
                  + "**: their numbers were not all measured under one environment.", ""]
    else:
        lines += ["The compared rows share one environment in every recorded field.", ""]
    return lines
