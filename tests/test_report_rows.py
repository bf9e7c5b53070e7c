"""Which rows the report reads and how it groups them: `main_rows` is its named filters
composed; a protocol's own rows are shown as the protocol declares, never inferred from its
flags; the headline table and the summary figure never pool two protocols, task sizes or shot
counts; the report reads a row's fields by name, not by string key."""

from __future__ import annotations

import ast
from pathlib import Path

import matplotlib.axes
import pytest

from mamf import protocols
from mamf.protocols.base import REGISTRY
from mamf.protocols.coop import Coop
from mamf.report import accuracy_table, main_rows, write_report
from mamf.report.fewshot import fewshot_section
from mamf.report.selection import held_out, one_measurement, pooling, uniform_sampling, unmixed
from mamf.report.tables import accuracy_grid, accuracy_notes
from mamf.results import Row, read_rows
from mamf.stats import estimate, interval
from tests.conftest import results_row

REPORT = Path(__file__).resolve().parents[1] / "src" / "mamf" / "report"
STUDIES = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_main_rows_are_the_named_filters_composed_and_each_keeps_what_it_says():
    rows = read_rows(STUDIES / "samplers-offline" / "results.jsonl")  # samplers beside uniform
    rows += read_rows(STUDIES / "paper-offline-expressive" / "results.jsonl")  # splits, alphas
    b2n = [results_row(method=m, protocol="base2novel", ways=10, n_tasks=2, task_accs=[0.8, 0.6])
           for m in ("zeroshot", "tip-adapter")]
    rows += b2n
    assert main_rows(rows) == pooling(one_measurement(uniform_sampling(rows)))
    kept = uniform_sampling(rows)
    assert {r.sampler for r in rows} > {r.sampler for r in kept} == {None, "uniform"}
    assert {r.split for r in held_out(rows)} == {"test"} < {r.split for r in rows}
    assert held_out([r for r in rows if r.split == "train"])  # nothing held out: all kept
    alphas = {r.alpha for r in unmixed(rows)}
    assert alphas <= {None, 1.0} and alphas < {r.alpha for r in rows}
    assert not set(map(id, b2n)) & set(map(id, pooling(rows)))
    assert len(main_rows(rows)) < len(rows)


def test_a_protocols_declared_row_fields_are_what_its_aggregate_adds():
    for name in protocols.names():
        p = protocols.get(name)
        declared = {f for f, _ in p.row_fields.fields} if p.row_fields else set()
        assert declared == set(p.aggregate([0.75, 0.5])[2]), name


@pytest.fixture
def fifth_protocol():
    """An all-way protocol whose tasks pool, like coop, that asks for no table of its own."""

    @protocols.register
    class AllWay(Coop):
        name = "all-way-test"
        shots_table = False

    yield AllWay
    del REGISTRY[AllWay.name]


def _rows(protocol: str, shots=(1, 4), seeds=(1, 2)) -> list[Row]:
    return [results_row(method=m, protocol=protocol, ways=10, shots=k, queries=20, seed=s,
                        dataset="colours", n_tasks=1, task_accs=[acc + 0.1 * k / 4 + 0.01 * s],
                        acc_mean=acc + 0.1 * k / 4 + 0.01 * s)
            for m, acc in (("zeroshot", 0.3), ("tip-adapter", 0.5)) for k in shots for s in seeds]


def test_an_all_way_protocol_is_shown_as_it_declares_not_as_coop(fifth_protocol, tmp_path):
    lines, pngs = fewshot_section(_rows("all-way-test"), tmp_path)
    assert (lines, pngs) == ([], {})  # not drawn as coop: it asked for no table
    lines, pngs = fewshot_section(_rows("coop"), tmp_path)
    assert "### coop: all-way accuracy against shots" in lines and "shots-colours" in pngs
    # a protocol with its own fields gets their table, titled and headed as it declares them
    b2n = [results_row(method="zeroshot", protocol="base2novel", ways=10, shots=2, seed=s,
                       task_accs=[0.8, 0.6], base_acc=0.8, novel_acc=0.6, hm=0.6857)
           for s in (1, 2)]
    own = protocols.get("base2novel").row_fields
    text = "\n".join(fewshot_section(b2n, tmp_path)[0])
    assert f"### base2novel: {own.title}" in text and own.note in text
    assert "| dataset | method | shots | base | novel | HM |" in text
    assert "| counting | zero-shot | 2 | 80.0 ± 0.0 (2) | 60.0 ± 0.0 (2) | 68.6 ± 0.0 (2) |" in text


def test_the_headline_never_pools_two_shot_counts(tmp_path, monkeypatch):
    """A coop grid at 1 and 4 shots: a row each in the accuracy table and a bar each in the
    summary figure, each the estimate of its own shot count's rows; no number of both."""
    rows = _rows("coop")
    table = accuracy_table(rows)
    lines = table.splitlines()
    assert lines[0] == "| dataset | shots | zero-shot | Tip-Adapter | seeds | tasks |"
    for line, k in zip(lines[2:], (1, 4), strict=True):
        for method, column in (("zeroshot", 2), ("tip-adapter", 3)):
            mine = {r.seed: r.task_accs for r in rows if r.method == method and r.shots == k}
            assert line.split(" | ")[column] == interval(estimate(mine))
    both = interval(estimate({s: [a for r in rows if r.method == "tip-adapter" and r.seed == s
                                  for a in r.task_accs] for s in (1, 2)}))
    assert both not in table
    assert accuracy_notes(rows)[0].startswith("Intervals: 95 % t over the per-seed means of 2")
    drawn = {}
    original = matplotlib.axes.Axes.bar

    def bar(self, xs, ys, *args, label=None, **kwargs):
        drawn[label] = list(ys)
        return original(self, xs, ys, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    write_report(rows, tmp_path, "coop")
    means = {k: sum(r.acc_mean for r in rows if r.method == "tip-adapter" and r.shots == k) / 2
             for k in (1, 4)}
    assert drawn["Tip-Adapter"] == pytest.approx([means[1], means[4]])


def test_the_headline_gives_each_protocol_and_task_size_its_own_row():
    rows = [results_row(method=m, protocol=p, ways=n, seed=s, task_accs=[acc + 0.01 * s])
            for p, n in (("paper", 2), ("paper", 3), ("episodic", 4))
            for m, acc in (("zeroshot", 0.3), ("mamf", 0.6)) for s in (1, 2)]
    head, body = accuracy_grid(rows)
    assert head[:3] == ["dataset", "protocol", "ways"]
    assert [b[:3] for b in body] == [["counting", "paper", "2"], ["counting", "paper", "3"],
                                     ["counting", "episodic", "4"]]
    # where nothing differs within a dataset the table is as it always was
    head, body = accuracy_grid([r for r in rows if r.protocol == "paper" and r.ways == 2])
    assert head == ["dataset", "zero-shot", "MAMF", "seeds", "tasks"] and len(body) == 1


def test_the_report_reads_fields_by_name_never_a_rows_string_key():
    """`row["method"]`, `r.get("run")`: a row read by string key is a dict the report should
    no longer see (`read_rows` gives `Row`s)."""
    names = {"r", "row", "first", "twin", "ra", "rb", "kept", "mine", "rows"}
    found = []
    for path in sorted(REPORT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.value if isinstance(node, ast.Subscript) else \
                node.func.value if isinstance(node, ast.Call) and \
                isinstance(node.func, ast.Attribute) and node.func.attr == "get" else None
            while isinstance(target, ast.Subscript):  # rows[0]["x"]
                target = target.value
            key = node.slice if isinstance(node, ast.Subscript) else \
                (node.args[0] if isinstance(node, ast.Call) and node.args else None)
            if isinstance(target, ast.Name) and target.id in names and \
                    isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, found
