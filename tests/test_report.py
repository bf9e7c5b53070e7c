"""The report compares methods only over the cells they all have, and renders as real HTML."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mamf.cli import main
from mamf.report import (
    claims_markdown,
    not_compared_markdown,
    settings_line,
    summary_table,
    write_report,
)
from mamf.results import read_rows
from mamf.stats import mean_ci95
from mamf.tasks import number_of_tasks

PAPER_OFFLINE = Path(__file__).resolve().parents[1] / "docs" / "results" / "paper-offline"


def row(method: str, ways: int, accs: list[float], seed: int = 312, **over) -> dict:
    r = {"method": method, "model": "effnet-minilm", "dataset": "counting", "protocol": "paper",
         "ways": ways, "shots": 6, "queries": 6, "seed": seed, "split": "test",
         "n_tasks": len(accs), "acc_mean": sum(accs) / len(accs), "acc_ci95": 0.0,
         "task_accs": accs, "time_s": 1.0, "host": "vm", "run": None}
    r.update(over)
    return r


def quick_start_rows() -> list[dict]:
    """The README's quick start as the issue ran it: effnet-minilm zero-shot on counting at
    n = 2..9 (K(n, 10) tasks each, 95 in all; these are the committed sweep's seed-312 rows, at
    chance for every n), then MAMF trained and evaluated at n = 5 only (10 tasks, mean 0.273)."""
    rows = [r for r in read_rows(PAPER_OFFLINE / "results.jsonl")
            if r["experiment_dataset"] == "counting" and r["seed"] == 312
            and r["method"] == "zeroshot"]
    assert [r["ways"] for r in rows] == list(range(2, 10))
    assert [r["n_tasks"] for r in rows] == [number_of_tasks(n, 10) for n in range(2, 10)]
    mamf = [8 / 30, 9 / 30, 7 / 30, 8 / 30, 9 / 30, 8 / 30, 9 / 30, 8 / 30, 8 / 30, 8 / 30]
    return rows + [row("mamf", 5, mamf, run="runs/mamf")]


def test_methods_are_compared_over_the_cells_they_share(tmp_path):
    rows = quick_start_rows()
    table = summary_table(rows)
    # pooled over all its task sizes zero-shot read 0.316 ± 0.030, as if above MAMF
    assert "| counting | 0.200 ± 0.000 | 0.273 ± 0.013 |" in table, table
    assert settings_line(rows) == ("counting: paper, 6-shot, zero-shot at 2,3,4,5,6,7,8,9-way "
                                   "with 95 tasks per seed and MAMF at 5-way with 10 tasks per seed")
    files = write_report(rows, tmp_path, "quick start")
    md = files["md"].read_text()
    assert "over the cells (ways, shots, seed, split) that all its methods have: counting: " \
           "5-way, 6-shot, seed 312, test split, 10 tasks per method" in md
    assert "The 7 row(s) outside them are listed under *Not compared*." in md
    # the zero-shot rows at the other task sizes are listed apart, with their own numbers
    apart = md.split("## Not compared")[1].split("##")[0]
    for n in (2, 3, 4, 6, 7, 8, 9):
        k = number_of_tasks(n, 10)
        accs = next(r["task_accs"] for r in rows if r["ways"] == n)
        mean, ci = mean_ci95(accs)
        assert f"| counting | zero-shot | {n} | 6 | 312 | test | {k} | {mean:.3f} ± {ci:.3f} | " \
               "only zero-shot has this cell |" in apart
    assert "| 5 |" not in apart
    # claims that cannot be judged say so in a sentence, with no empty table
    assert "**Claim 1: MAMF beats classical fine-tuning.** It cannot be judged: there are no " \
           "classical FT results here." in md
    assert "It cannot be judged: there are no FOMAML results here." in md
    assert "| dataset | MAMF − classical |" not in md and "FOMAML − zero-shot |" not in md
    assert not (tmp_path / "figures" / "fomaml-vs-zeroshot.png").exists()


def test_the_summary_figure_uses_the_shared_cells(tmp_path, monkeypatch):
    drawn = {}
    import matplotlib.axes

    original = matplotlib.axes.Axes.bar

    def bar(self, xs, ys, *args, label=None, **kwargs):
        drawn[label] = list(ys)
        return original(self, xs, ys, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    write_report(quick_start_rows(), tmp_path, "quick start")
    assert drawn["zero-shot"] == pytest.approx([0.2]) and drawn["MAMF"] == pytest.approx([0.82 / 3])


def test_claims_are_judged_over_shared_cells_and_name_what_they_skip():
    rows = []
    for seed in (1, 2):
        for method, acc in (("zeroshot", 0.3), ("classical", 0.6), ("mamf", 0.7),
                            ("fomaml", 0.5)):
            rows.append(row(method, 5, [acc, acc + 0.1], seed=seed))
    rows.append(row("mamf", 3, [0.9, 0.9]))  # no counterpart: must not enter any claim
    rows.append(row("zeroshot", 5, [0.3, 0.4], seed=1, dataset="emoji"))  # nothing to compare
    rows.append(row("zeroshot", 5, [0.9, 0.9], seed=1, dataset="emoji", model="clip"))
    assert settings_line(rows).endswith("emoji: paper, 5-way, 6-shot, 2 tasks per method and seed")
    assert "| emoji | zero-shot | 5 | 6 | 1 | test | 2 | 0.900 ± 0.000 | a second zero-shot row " \
           "for this cell (model clip) |" in not_compared_markdown(rows)
    text = claims_markdown(rows)
    assert "| counting | +0.100 ± 0.000 | 4 | holds |" in text
    assert "| counting | 0.350 | +0.200 ± 0.000 | +0.200 ± 0.000 | MAMF beats FOMAML | holds |" \
           in text
    assert "Not judged on emoji (there are no MAMF and classical FT results there)." in text
    assert "Not judged on emoji (there are no FOMAML and MAMF results there)." not in text
    assert "Not judged on emoji (there are no FOMAML results there)." in text
    # methods that ran on disjoint cells share nothing: one sentence
    disjoint = [row("mamf", 5, [0.7, 0.8]), row("classical", 3, [0.7, 0.8])]
    assert ("It cannot be judged: MAMF and classical FT share no (ways, shots, seed, split) "
            "cell with equally many tasks.") in claims_markdown(disjoint)


FULL_GRID = """\
| dataset | zero-shot | classical FT | MAMF | FOMAML |
|---|---|---|---|---|
| counting | 0.318 ± 0.013 | 0.645 ± 0.019 | 0.631 ± 0.018 | 0.571 ± 0.018 |
| fashion-mnist | 0.444 ± 0.016 | 0.911 ± 0.007 | 0.915 ± 0.007 | 0.833 ± 0.012 |
| digits | 0.320 ± 0.013 | 0.952 ± 0.004 | 0.935 ± 0.004 | 0.784 ± 0.012 |
| emoji | 0.282 ± 0.004 | 0.676 ± 0.004 | 0.662 ± 0.004 | 0.618 ± 0.004 |"""
FULL_SETTINGS = (
    "counting: paper, 2,3,4,5,6,7,8,9-way, 6-shot, 95 tasks per method and seed; fashion-mnist: "
    "paper, 2,3,4,5,6,7,8,9-way, 10-shot, 95 tasks per method and seed; digits: paper, "
    "2,3,4,5,6,7,8,9-way, 17-shot, 95 tasks per method and seed; emoji: episodic, 2,5,10,20-way, "
    "1-shot, 2400 tasks per method and seed")
FULL_CLAIMS = """\
| counting | -0.014 ± 0.008 | 475 | does not hold |
| fashion-mnist | +0.004 ± 0.003 | 475 | holds |
| digits | -0.018 ± 0.003 | 475 | does not hold |
| emoji | -0.014 ± 0.003 | 12000 | does not hold |

**Claim 2: FOMAML helps only where zero-shot accuracy is already high; where it is low (below \
0.50 here), MAMF beats FOMAML.**

| dataset | zero-shot | FOMAML − zero-shot | MAMF − FOMAML | what the claim expects | verdict |
|---|---|---|---|---|---|
| counting | 0.318 | +0.253 ± 0.013 | +0.060 ± 0.010 | MAMF beats FOMAML | holds |
| fashion-mnist | 0.444 | +0.388 ± 0.014 | +0.082 ± 0.007 | MAMF beats FOMAML | holds |
| digits | 0.320 | +0.464 ± 0.013 | +0.151 ± 0.010 | MAMF beats FOMAML | holds |
| emoji | 0.282 | +0.336 ± 0.004 | +0.043 ± 0.003 | MAMF beats FOMAML | holds |

The claim's expectation holds on 4 of 4 dataset(s).
FOMAML nevertheless improves on zero-shot where zero-shot is low: counting, fashion-mnist, \
digits, emoji (it helps *not only* where zero-shot is high).

Verdicts:"""


def test_a_full_grid_gives_the_same_tables_as_before():
    """The committed paper-offline sweep (every method in every cell): today's text exactly."""
    rows = read_rows(PAPER_OFFLINE / "results.jsonl")
    assert len(rows) == 560
    assert summary_table(rows) == FULL_GRID
    assert settings_line(rows) == FULL_SETTINGS
    claims = claims_markdown(rows)
    assert FULL_CLAIMS in claims and "Not judged" not in claims


def test_report_counts_a_repeated_row_once(tmp_path, caplog):
    rows = quick_start_rows()
    out = tmp_path / "results"
    out.mkdir()
    lines = [json.dumps(r) for r in rows]
    (out / "results.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["report", str(out)]) == 0
    once = (out / "report.md").read_text()
    # evaluate run twice into the same folder, a damaged line and a torn one
    (out / "results.jsonl").write_text("\n".join(lines + lines[-3:] + ["[1, 2]", lines[0][:30]]))
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == once
    assert "skipped 3 row(s)" in caplog.text and "skipped 2 line(s)" in caplog.text


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.cells: list[str] = []
        self.links: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")
        self.links += [v for k, v in attrs.items() if k in ("href", "src") and v]

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def test_html_report_is_real_html_with_tables_and_inline_figures(tmp_path):
    rows = [r for r in read_rows(PAPER_OFFLINE / "results.jsonl")
            if r["experiment_dataset"] == "counting"]
    rows.append(row("zeroshot", 5, [0.2] * 10, dataset="a|b<c>"))  # a name to escape
    rows.append(row("zeroshot", 5, [0.2] * 10, seed=999))  # a cell no other method has
    files = write_report(rows, tmp_path, "counting <only>")
    page = files["html"].read_text()
    parsed = _Elements()
    parsed.feed(page)
    assert parsed.tags.count("table") == 4  # summary, not compared, claim 1, claim 2
    assert {"h1", "h2", "thead", "tbody", "tr", "th", "td", "figure", "style"} <= set(parsed.tags)
    assert "pre" not in parsed.tags and "script" not in parsed.tags
    assert "| dataset |" not in page and "|---|" not in page  # no markdown left over
    assert "0.318 ± 0.013" in parsed.cells and "a|b<c>" in parsed.cells
    # every figure inline as a PNG; nothing fetched from anywhere
    assert len(parsed.images) == len([f for f in files if f not in ("md", "html")]) == 4
    for img in parsed.images:
        assert img["src"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert all(link.startswith("data:") for link in parsed.links)
    assert "<title>counting &lt;only&gt;</title>" in page
    assert "<strong>Claim 1: MAMF beats classical fine-tuning.</strong>" in page
