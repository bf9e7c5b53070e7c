"""The report for a paper: setup block, training curves, per-class accuracy and confusion from
stored predictions, environment differences, tables as CSV and LaTeX."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml

from mamf.report import write_report
from mamf.report.environment import differing, environment_lines
from mamf.report.export import latex_text
from mamf.report.predictions import confusion, per_class
from mamf.report.setup import setup_grid
from mamf.results import Row, decode_predictions, encode_predictions
from mamf.runs.experiment import load_experiment, run_experiment
from mamf.tasks.task import Task
from tests.conftest import results_row


def _task(classes, labels):
    return Task(np.array(classes), np.zeros(0, int), np.zeros(0, int),
                np.arange(len(labels)), np.array(labels))


def test_stored_predictions_give_the_hand_counted_confusion_matrix():
    # two tasks over the dataset's classes a, b, c, d (global ids 0..3)
    t1 = _task([2, 0], [0, 0, 1, 1])        # true: c c a a
    t2 = _task([1, 2, 3], [0, 1, 2, 2])     # true: b c d d
    records = [encode_predictions(t1, np.array([0, 1, 1, 1])),  # given: c a a a
               encode_predictions(t2, np.array([0, 0, 2, 1]))]  # given: b b d c
    assert records[0] == [[2, 0], "0011", "0111"]  # compact: one character per query image
    assert [list(a) for a in decode_predictions(records[1])] == [[1, 2, 3, 3], [1, 1, 3, 2]]
    row = results_row(class_names=["a", "b", "c", "d"],
                      predictions=json.loads(json.dumps(records)))
    names, counts = confusion([row])
    assert names == ["a", "b", "c", "d"]
    # by hand: a -> a twice; b -> b; c -> c, a, b; d -> d, c
    assert counts.tolist() == [[2, 0, 0, 0],
                               [0, 1, 0, 0],
                               [1, 1, 1, 0],
                               [0, 0, 1, 1]]
    head, body = per_class(names, counts)
    assert [r[:3] for r in body] == [["a", "2", "1.000"], ["b", "1", "1.000"],
                                     ["c", "3", "0.333"], ["d", "2", "0.500"]]
    assert body[2][3] == "a" and body[3][3] == "c"  # most often given instead (first of ties)


def test_tasks_of_more_than_62_classes_store_lists():
    t = _task(list(range(70)), [65, 3])
    record = encode_predictions(t, np.array([64, 3]))
    assert record[1:] == [[65, 3], [64, 3]]
    assert [list(a) for a in decode_predictions(record)] == [[65, 3], [64, 3]]


def test_environment_differences_are_named():
    rows = [results_row(torch="2.1", threads=1, date="2026-12-01T10:00:00+00:00"),
            results_row(torch="2.1", threads=2, date="2026-12-01T23:00:00+00:00"),
            results_row(torch="2.2", threads=1, date="2026-12-01T11:00:00+00:00")]
    assert differing(rows) == ["torch", "threads"]  # one day is one date
    lines = environment_lines(rows, rows[:2])
    assert "**The compared rows differ in threads**" in "\n".join(lines)
    bare = results_row()
    assert differing(rows[:1] + [bare]) == ["torch", "threads", "date"]  # recorded in one only
    assert "record no versions" in "\n".join(environment_lines([bare], [bare]))


def test_latex_escapes_and_csv_round_trips():
    head, body = ["dataset", "MAMF"], [["fashion_mnist & co", "0.50 ± 0.02"], ["50%", "–"]]
    tex = latex_text(head, body)
    assert r"fashion\_mnist \& co & 0.50 $\pm$ 0.02 \\" in tex
    assert r"50\% & -- \\" in tex
    assert tex.startswith(r"\begin{tabular}{lr}") and tex.rstrip().endswith(r"\end{tabular}")


def test_setup_states_each_methods_own_rates_and_what_tuning_chose(tmp_path):
    """FOMAML adapts at `metatest.inner_lr`, zero-shot not at all; a row whose settings are
    rebuilt from experiment.yaml gets the rates its tuning chose, not the file's."""
    exp = {"name": "t", "model": "tiny-random-clip", "methods": ["zeroshot", "classical", "fomaml"],
           "seeds": [1], "settings": {"train": {"lr": 1e-3}, "metatest": {"lr": 1e-4,
                                                                          "inner_lr": 0.05}},
           "datasets": {"colours": {"root": str(tmp_path), "ways": [2]}}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(exp))
    base = {"model": "tiny-random-clip", "seed": 1, "ways": 2, "split": "test",
            "experiment_dataset": "colours", "config_id": "none", "trainable_params": 10}
    rows = [results_row(**base, method="zeroshot"),
            results_row(**base, method="classical", train_steps=5,
                        tuned_on_dev={"values": {"train.lr": 0.1, "metatest.lr": 0.01}}),
            results_row(**base, method="fomaml", train_steps=5)]
    table, missing, rebuilt = setup_grid(rows, tmp_path)
    body = table.body
    assert (missing, rebuilt) == (3, 3)
    assert {b[0]: b[5] for b in body} == {"zero-shot": "– / –", "classical FT": "0.1 / 0.01",
                                         "FOMAML": "0.001 / 0.05"}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from tests.conftest import make_folder

    tmp = tmp_path_factory.mktemp("paper")
    folder = make_folder(tmp / "colours")
    raw = {"name": "tiny", "model": "tiny-random-clip", "methods": ["zeroshot", "classical"],
           "seeds": [1, 2],
           "settings": {"train": {"lr": 1e-3, "epochs": 1, "augment": False, "eval_every": 2},
                        "metatest": {"epochs": 1, "lr": 1e-3, "save_predictions": True},
                        "data": {"tasks": 4}},
           "datasets": {"colours": {"root": str(folder), "ways": [2, 3]}}}
    (tmp / "exp.yaml").write_text(yaml.safe_dump(raw))
    out = tmp / "out"
    rows = run_experiment(load_experiment(tmp / "exp.yaml"), out, progress=False)
    return out, rows


def test_rows_keep_predictions_that_give_their_accuracies(grid):
    _, rows = grid
    for r in rows:
        assert len(r.predictions) == r.n_tasks
        accs = [float(np.mean(np.equal(*decode_predictions(p)))) for p in r.predictions]
        assert accs == pytest.approx(r.task_accs, abs=1e-12)
        assert r.trainable_params > 0
    trained = [r for r in rows if r.method == "classical"]
    assert all(r.train_log.startswith("train_logs/") for r in trained)


def test_the_report_has_the_new_sections_on_a_tiny_grid(grid):
    out, rows = grid
    files = write_report(rows, out, "tiny", per_class_of=("colours", "classical", 3))
    text = files["md"].read_text()
    for heading in ("## Setup", "## Training curves", "## Per-class accuracy and confusion",
                    "## Software and environment"):
        assert heading in text
    setup = text.split("## Setup")[1].split("##")[0]
    line = next(x for x in setup.splitlines() if x.startswith("| classical FT"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "tiny-random-clip" and int(cells[4]) > 0  # images back-propagated
    assert cells[5] == "0.001 / 0.001" and cells[6] == "1.0 / 1" and cells[8] == "1,2"
    assert "no settings file" not in setup
    tasks = sum(r.n_tasks for r in rows if r.method == "classical" and r.ways == 3)
    assert f"classical FT on colours, 3-way: the {tasks} test tasks of seeds 1, 2 pooled" in text
    assert "training-colours" in files and "confusion-colours-classical-3" in files
    assert "## Training curves" in text and "have no training log" not in text
    assert re.search(r"Measured with mamf [^;]+; commit", text)
    # tables beside report.md parse back
    with (out / "tables" / "accuracy.csv").open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["dataset", "ways", "zero-shot", "zero-shot rows", "zero-shot config_ids",
                        "classical FT", "classical FT rows", "classical FT config_ids", "seeds",
                        "tasks"]  # one row per task size, each cell with the rows behind it
    assert [r[:2] for r in table[1:]] == [["colours", "2"], ["colours", "3"]]
    for line in table[1:]:
        assert line[2][:2] == "0."  # zero-shot's accuracy at this task size
        for column, method in ((3, "zeroshot"), (6, "classical")):
            mine = [r for r in rows if r.method == method and r.ways == int(line[1])]
            assert line[column] == str(len(mine)) == "2"  # two seeds
            assert line[column + 1] == " ".join(sorted({r.config_id for r in mine}))
    with (out / "tables" / "per-class.csv").open() as f:
        classes = list(csv.reader(f))
    chosen = [r for r in rows if r.method == "classical" and r.ways == 3]
    assert classes[0][:3] == ["class", "class rows", "class config_ids"]
    for line in classes[1:]:  # the rows whose tasks hold the class, and their settings
        holding = [r for r in chosen if any(
            line[0] in [r.class_names[t] for t in decode_predictions(p)[0]] for p in r.predictions)]
        assert line[1] == str(len(holding)) != "0"
        assert line[2] == " ".join(sorted({r.config_id for r in holding}))
    with (out / "tables" / "confusion.csv").open() as f:
        matrix = list(csv.reader(f))
        matrix = [[line[0], *line[3:]] for line in matrix]  # without the rows behind each
    assert sum(int(c) for r in matrix[1:] for c in r[1:]) == sum(
        len(p[1]) for r in rows if r.method == "classical" and r.ways == 3
        for p in r.predictions)
    for name in ("accuracy", "setup", "per-class", "confusion"):
        tex = (out / "tables" / f"{name}.tex").read_text()
        assert tex.count(r"\\") == len(list(csv.reader((out / "tables" /
                                                         f"{name}.csv").open())))
    # the default cell: the first method with predictions at its largest size
    assert "zero-shot on colours, 3-way: the" in write_report(rows, out, "t")["md"].read_text()


def test_rows_without_predictions_logs_or_settings_say_so(grid, tmp_path):
    _, rows = grid
    bare = [Row.from_json({k: v for k, v in r.to_json().items() if k not in (
        "predictions", "class_names", "train_log", "trainable_params")}) for r in rows]
    text = write_report(bare, tmp_path, "bare")["md"].read_text()
    assert "No row holds its test tasks' predictions" in text
    assert "have no training log beside them" in text
    assert "have no settings file beside them" in text
    assert "training-colours" not in text


def test_one_task_size_draws_no_curve(grid, tmp_path):
    _, rows = grid
    files = write_report([r for r in rows if r.ways == 3], tmp_path, "one size")
    assert not any(name.startswith("curve-") for name in files)


def test_the_summary_legend_fits_the_figure_with_one_dataset(tmp_path, monkeypatch):
    from mamf.report import figures

    methods = ["zeroshot", "classical", "mamf", "prototype", "zs-probe", "tip-adapter",
               "tip-adapter-f"]
    rows = [results_row(method=m, n_tasks=2, task_accs=[0.2, 0.4]) for m in methods]
    seen = {}
    original = figures.save

    def spy(fig, plt, path, tight=False):
        fig.canvas.draw()
        box = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
        seen["legend"] = box.get_window_extent()
        seen["figure"] = fig.bbox
        return original(fig, plt, path, tight)

    monkeypatch.setattr(figures, "save", spy)
    figures.bar_figure(rows, tmp_path / "summary.png")
    legend, figure = seen["legend"], seen["figure"]
    assert figure.x0 <= legend.x0 and legend.x1 <= figure.x1  # no label runs off a side
