"""docs/results.md quotes only what the committed reports say: every interval in it (a mean or
difference with its 95 % half-width, `+0.035 ± 0.017`) appears, with its sign where it has one,
in some docs/results/*/report.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = re.compile(r"(?<![\d.])([+-−]?)(\d+\.\d+) ± (\d+\.\d+)")


def intervals(text: str) -> list[str]:
    """Each interval of `text` as a report writes it (a unicode minus read as '-')."""
    return [f"{sign.replace('−', '-')}{mean} ± {half}"
            for sign, mean, half in INTERVAL.findall(text)]


def unquoted(doc: str, reports: str) -> list[str]:
    """The intervals of `doc` that no report holds (an unsigned one may be a signed one's)."""
    return [i for i in intervals(doc) if i not in reports]


def test_the_check_reads_intervals_and_finds_one_no_report_holds():
    reports = "| emoji | -0.003 ± 0.004 | and +0.035 ± 0.017 |"
    assert intervals("MAMF −0.003 ± 0.004, loses 0.035 ± 0.017") == ["-0.003 ± 0.004",
                                                                     "0.035 ± 0.017"]
    assert unquoted("−0.003 ± 0.004 and 0.035 ± 0.017", reports) == []
    assert unquoted("-0.010 ± 0.015", reports) == ["-0.010 ± 0.015"]
    assert unquoted("+0.003 ± 0.004", reports) == ["+0.003 ± 0.004"]  # the sign counts


def test_every_interval_in_docs_results_appears_in_a_committed_report():
    doc = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    reports = "\n".join(p.read_text(encoding="utf-8")
                        for p in sorted((ROOT / "docs" / "results").glob("*/report.md")))
    assert intervals(doc), "docs/results.md quotes no interval"
    assert unquoted(doc, reports) == []
