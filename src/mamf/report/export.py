"""The report's tables also as files beside report.md, for a paper: tables/<name>.csv (the
cells as shown) and tables/<name>.tex (a booktabs tabular, the text escaped for LaTeX)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mamf.system.io import atomic_write_text, make_folder

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


def write_tables(out: Path, tables: dict[str, tuple[list[str], list[list[str]]]]) -> list[Path]:
    """Each table as tables/<name>.csv and tables/<name>.tex under `out`; returns the paths."""
    paths = []
    for name, (head, body) in tables.items():
        for suffix, text in ((".csv", csv_text(head, body)), (".tex", latex_text(head, body))):
            path = make_folder(Path(out) / "tables") / f"{name}{suffix}"
            atomic_write_text(path, text)
            paths.append(path)
    return paths
