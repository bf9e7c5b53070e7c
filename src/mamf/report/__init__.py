"""Tables and figures from results rows: what a person reads at a glance.

One module a section: `hypotheses` (first: the hypotheses the experiment file declared, tested
as declared), `caveats` (tuning, collapses and budget differences, from the files), `tables`
(the accuracy table, what it compares, what it leaves out), `selection` (which rows each
section reads, and `main_rows`),
`claims` (the paper's two claims), `zeroshot` (claim 2's figure), `spurious` (claim 1 against
a shortcut's strength), `reference` (every method
against one), `samplers`, `fewshot` (coop and base2novel), `overfitting` (training split,
WiSE-FT), `setup` (how each method was trained), `curves` (training logs), `predictions`
(per-class accuracy, confusion), `environment` (versions, commit, machine); `figures` apart from
the tables; `compare` decides which rows are compared; `files` finds what lies beside the rows;
every number comes from `mamf.stats`. report.md is the text; report.html is the same text as a
self-contained page (`html`); the tables are also CSV and LaTeX files under tables/ (`export`).
"""

from __future__ import annotations

from pathlib import Path

from mamf.report.caveats import caveats_section
from mamf.report.claims import LOW_ZERO_SHOT, claim2, claims_markdown
from mamf.report.common import colour, in_order, label, safe_name
from mamf.report.compare import Comparison, cell_of, compare, method_estimates, ordered, paired
from mamf.report.curves import curves_section
from mamf.report.environment import environment_lines
from mamf.report.export import write_tables
from mamf.report.figures import bar_figure, curve_figure
from mamf.report.html import markdown_html
from mamf.report.hypotheses import hypotheses_section
from mamf.report.overfitting import overfitting_sections
from mamf.report.predictions import predictions_section
from mamf.report.reference import check_reference, reference_section
from mamf.report.samplers import samplers_section
from mamf.report.selection import main_rows, one_measurement, uniform_sampling
from mamf.report.setup import setup_section
from mamf.report.spurious import spurious_section
from mamf.report.tables import (
    accuracy_grid,
    accuracy_notes,
    accuracy_table,
    comparison_note,
    fixed_images_note,
    not_compared_markdown,
    settings_line,
    training_line,
)
from mamf.report.zeroshot import zeroshot_figure
from mamf.results import Row
from mamf.system.io import atomic_write_text

__all__ = ["LOW_ZERO_SHOT", "Comparison", "cell_of", "claim2", "claims_markdown", "colour",
           "compare", "comparison_note", "in_order", "label", "main_rows", "markdown_html",
           "not_compared_markdown", "paired", "method_estimates", "settings_line",
           "accuracy_table", "training_line", "write_report"]


def _header(every_row: list[Row], shown: list[Row]) -> str:
    hosts = sorted({r.host or "?" for r in every_row})
    count = f"{len(every_row)} result rows"
    if len(shown) != len(every_row):
        count += f" ({len(shown)} in the accuracy table)"
    return f"{count}; hosts: {', '.join(hosts)}."


def report_markdown(rows: list[Row], title: str, figures: dict[str, Path],
                    extra: list[str] | None = None, every_row: list[Row] | None = None,
                    reference: str | None = None, first: list[str] | None = None) -> str:
    """The whole report as markdown; `figures` (name -> PNG in the report's figures/ folder)
    are linked relative to the report's folder; `extra`: more sections' lines before them."""
    note = comparison_note(rows)
    # what the interval is over (seeds, or one run's tasks) is the coverage line's to say
    over = ", on the test tasks every method has" if note else ""
    md = [f"# {title}", "", _header(every_row or rows, rows), "", *(first or []),
          f"## Accuracy (mean ± 95 % interval{over})", "", accuracy_table(rows), "",
          *accuracy_notes(rows)]
    if note:
        md += [note]
    fixed = fixed_images_note(rows)
    md += ([fixed] if fixed else []) + ["", f"Settings: {settings_line(rows)}.", ""]
    trained = training_line(rows)
    if trained:
        md += [f"Training per run (updates, images back-propagated, budget): {trained}.", ""]
    apart = not_compared_markdown(rows)
    if apart:
        md += [apart, ""]
    versus = reference_section(rows, reference)
    if versus:
        md += [*versus, ""]
    md += [claims_markdown(rows), ""]
    if extra:
        md += [*extra, ""]
    md += ["## Figures", ""]
    md += [f"![{name}](figures/{p.name})" for name, p in figures.items()]
    return "\n".join(md) + "\n"


def curve_datasets(rows: list[Row]) -> list[str]:
    """The datasets that get an accuracy-against-n curve: those where some compared method has
    two task sizes or more (a single size would be a one-point "curve")."""
    out = []
    for d in ordered(rows)[0]:
        mine = [r for r in rows if r.dataset_name == d]
        sizes = {}
        for n in {r.ways for r in mine}:
            for r in compare([r for r in mine if r.ways == n]).compared:
                sizes.setdefault(r.method, set()).add(n)
        if any(len(ns) > 1 for ns in sizes.values()):
            out.append(d)
    return out


def write_report(rows: list[Row], out: Path, title: str = "mamf report",
                 reference: str | None = None,
                 per_class_of: tuple | None = None) -> dict[str, Path]:
    """report.md, report.html (figures embedded), the PNGs and tables/ (CSV and LaTeX), in
    `out`, which also holds what the rows point to (configs/, train_logs/). `reference`: the
    method every other is paired against (default: classical FT, else zero-shot); `per_class_of`:
    (dataset, method, ways) whose per-class accuracy and confusion are shown (default: the
    first with stored predictions)."""
    from mamf.report.fewshot import fewshot_section

    if reference is not None:
        check_reference(rows, reference)
    every_row = rows
    out = Path(out)
    figures = out / "figures"
    overfitting, overfitting_pngs = overfitting_sections(every_row, figures)
    fewshot, fewshot_pngs = fewshot_section(one_measurement(uniform_sampling(every_row)), figures)
    rows = main_rows(every_row)
    if not rows:  # base2novel alone: its own section is the report
        text = "\n".join([f"# {title}", "", _header(every_row, rows), "", *fewshot])
        return _write(out, title, text, fewshot_pngs)
    pngs = {"summary": bar_figure(rows, figures / "summary.png", title)}
    for d in curve_datasets(rows):
        pngs[f"curve-{safe_name(d)}"] = curve_figure(rows, d, figures / f"curve-{safe_name(d)}.png")
    judged = claim2(rows)
    if judged:
        pngs["fomaml"] = zeroshot_figure(judged, figures / "fomaml-vs-zeroshot.png")
    shortcut, shortcut_pngs = spurious_section(rows, out, figures)
    pngs.update(shortcut_pngs)
    pngs.update(fewshot_pngs)
    pngs.update(overfitting_pngs)
    setup, setup_table = setup_section(rows, out)
    curves, curve_pngs = curves_section(rows, out, figures)
    per_class, class_pngs, class_tables = predictions_section(rows, figures, per_class_of)
    pngs.update(curve_pngs)
    pngs.update(class_pngs)
    tables = {"accuracy": accuracy_grid(rows), "setup": setup_table, **class_tables}
    listed = ", ".join(f"tables/{name}.csv" for name in tables)
    extra = shortcut + samplers_section(one_measurement(every_row)) + fewshot + \
        ([""] if overfitting else []) + overfitting + [""] + setup + curves + per_class + \
        environment_lines(every_row, compare(rows).compared) + \
        [f"Tables as files: {listed} (and .tex beside each, for LaTeX)."]
    first = hypotheses_section(every_row, out) + caveats_section(every_row, out)
    text = report_markdown(rows, title, pngs, extra, every_row, reference, first)
    written = _write(out, title, text, pngs)
    write_tables(out, tables)
    return written


def _write(out: Path, title: str, text: str, pngs: dict[str, Path]) -> dict[str, Path]:
    atomic_write_text(out / "report.md", text)
    images = {f"figures/{p.name}": p.read_bytes() for p in pngs.values()}
    atomic_write_text(out / "report.html", markdown_html(text, title, images))
    return {"md": out / "report.md", "html": out / "report.html", **pngs}
