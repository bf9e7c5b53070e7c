"""The report's tables also as files beside report.md, for a paper: tables/<name>.csv (the
entries as shown, and for an entry that pools rows the count and config_ids of those rows, so a
number leads back to the rows and settings behind it) and tables/<name>.tex (a booktabs
tabular, the text escaped for LaTeX)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from mamf.results import Row
from mamf.system.io import atomic_write_text, make_folder


@dataclass
class Grid:
    """A table: its header, its lines of entries as shown, and per line the results rows
    behind some of its columns (column index -> rows), which the CSV names beside the entry.
    (A *cell*, in the report, is the key of test tasks methods share: `report.compare.Cell`.)"""

    head: list[str]
    body: list[list[str]]
    behind: list[dict[int, list[Row]]] = field(default_factory=list)

    def __iter__(self):  # (head, body), as a table without rows behind it is given
        return iter((self.head, self.body))


def _ids(rows: list[Row]) -> str:
    """The settings' hashes of `rows`, sorted, space-separated (rows before hashes have none)."""
    return " ".join(sorted({r.config_id for r in rows if r.config_id}))


def linked(grid: Grid) -> tuple[list[str], list[list[str]]]:
    """The table with, after each column that has rows behind it, two more: how many rows the
    entry pools (`<column> rows`) and their config_ids (`<column> config_ids`)."""
    columns = sorted({c for row in grid.behind for c in row})
    if not columns:
        return grid.head, grid.body

    def widen(shown: list[str], behind: dict[int, list[Row]] | None) -> list[str]:
        out = []
        for c, entry in enumerate(shown):
            out.append(entry)
            if c in columns:
                if behind is None:
                    out += [f"{entry} rows", f"{entry} config_ids"]
                else:
                    rows = behind.get(c, [])
                    out += [str(len(rows)), _ids(rows)]
        return out

    body = [widen(shown, grid.behind[i] if i < len(grid.behind) else {})
            for i, shown in enumerate(grid.body)]
    return widen(grid.head, None), body

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
          "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
          "^": r"\textasciicircum{}", "±": r"$\pm$", "–": "--", "−": "$-$"}


def latex(text: object) -> str:
    return "".join(_LATEX.get(c, c) for c in str(text))


def csv_text(head: list[str], body: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(head)
    writer.writerows(body)
    return buffer.getvalue()


def latex_text(head: list[str], body: list[list[str]]) -> str:
    lines = [r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}", r"\toprule",
             " & ".join(latex(h) for h in head) + r" \\", r"\midrule"]
    lines += [" & ".join(latex(c) for c in row) + r" \\" for row in body]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_tables(out: Path, tables: dict[str, Grid | tuple[list[str], list[list[str]]]]
                 ) -> list[Path]:
    """Each table as tables/<name>.csv (with the rows behind its entries, `linked`) and
    tables/<name>.tex under `out`; returns the paths."""
    paths = []
    for name, table in tables.items():
        head, body = table
        wide = linked(table) if isinstance(table, Grid) else (head, body)
        for suffix, text in ((".csv", csv_text(*wide)), (".tex", latex_text(head, body))):
            path = make_folder(Path(out) / "tables") / f"{name}{suffix}"
            atomic_write_text(path, text)
            paths.append(path)
    return paths
