"""The report's "Per-class accuracy and confusion" for one chosen (dataset, method, task
size): the stored predictions of every test task of its rows (`metatest.save_predictions`)
pooled into a confusion matrix over the dataset's classes, and each class's accuracy as the
share of its query images given their own class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mamf.report.common import in_order, label, md, safe_name
from mamf.report.export import Grid
from mamf.report.figures import pyplot, save
from mamf.results import PREDICTION_DIGITS as DIGITS
from mamf.results import Row, decode_predictions
from mamf.system.errors import MamfError

Choice = tuple  # (dataset, method, ways)


def with_predictions(rows: list[Row]) -> list[Row]:
    """The rows whose stored predictions can be read (`damaged` says which cannot)."""
    return [r for r in rows if r.predictions and r.class_names and not damaged(r)]


def damaged(row: Row) -> bool:
    """Whether a row's stored predictions are unreadable or disagree with the row: one record
    [classes, truth, given] per test task, global class ids within `class_names`, task-local
    labels within the task's classes (encoded as `encode_predictions` writes them), and each
    task's share of truth == given its recorded accuracy."""
    names, records, accs = row.class_names, row.predictions, row.task_accs
    if not isinstance(names, list) or not isinstance(records, list) or \
            not isinstance(accs, list) or len(records) != len(accs):
        return True
    for record, acc in zip(records, accs):
        if not isinstance(record, list) or len(record) != 3:
            return True
        classes, truth, given = record
        if not _ints(classes, len(names)):
            return True
        local = [_labels(x, len(classes)) for x in (truth, given)]
        if local[0] is None or local[1] is None or len(local[0]) != len(local[1]):
            return True
        right = sum(a == b for a, b in zip(*local))
        if not local[0] or not isinstance(acc, (int, float)) or \
                abs(right / len(local[0]) - acc) > 1e-6:
            return True
    return False


def _ints(values, bound: int) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound for v in values)


def _labels(encoded, ways: int) -> list[int] | None:
    """Task-local labels as `encode_predictions` wrote them (a string, or a list of ints)."""
    if isinstance(encoded, str):
        digits = [DIGITS.find(c) for c in encoded]
        return digits if all(0 <= d < ways for d in digits) else None
    return list(encoded) if _ints(encoded, ways) else None


def choose(rows: list[Row], wanted: Choice | None = None) -> Choice | None:
    """The (dataset, method, ways) shown: `wanted` when given (it must have predictions), else
    the first dataset's first method in table order that has them, at its largest task size."""
    kept = with_predictions(rows)
    if wanted is not None:
        if not any((r.dataset_name, r.method, r.ways) == tuple(wanted) for r in kept):
            raise MamfError(f"no rows with stored predictions for {wanted[0]} {wanted[1]} "
                            f"{wanted[2]}-way (evaluate with --set metatest.save_predictions=true)")
        return tuple(wanted)
    if not kept:
        return None
    d = kept[0].dataset_name
    m = in_order({r.method for r in kept if r.dataset_name == d})[0]
    return d, m, max(r.ways for r in kept if r.dataset_name == d and r.method == m)


def one_setting(rows: list[Row]) -> tuple[list[Row], int]:
    """The rows that measured the first row's setting (its key but the seed), one per seed,
    and how many others were left out: tasks of other protocols or splits are not one test."""
    first = rows[0].key.without("seed", "queries")
    kept: dict = {}
    for r in rows:
        key = r.key
        if key.without("seed", "queries") == first:
            kept.setdefault(key.seed, r)
    return list(kept.values()), len(rows) - len(kept)


def confusion(rows: list[Row]) -> tuple[list[str], np.ndarray]:
    """(class names, counts[true, given]) over every stored task of `rows`, the classes that
    occur as a true class in some task, in the dataset's order."""
    names = rows[0].class_names
    counts = np.zeros((len(names), len(names)), dtype=np.int64)
    for r in rows:
        for record in r.predictions:
            truth, given = decode_predictions(record)
            np.add.at(counts, (truth, given), 1)
    seen = np.flatnonzero(counts.sum(1))
    return [names[i] for i in seen], counts[np.ix_(seen, seen)]


def rows_by_class(rows: list[Row]) -> dict[str, list[Row]]:
    """Class name -> the rows with a stored test task that has query images of that class (the
    rows behind its line in tables/per-class.csv and tables/confusion.csv)."""
    out: dict[str, list[Row]] = {}
    for r in rows:
        truths = {int(t) for record in r.predictions for t in decode_predictions(record)[0]}
        for t in sorted(truths):
            out.setdefault(r.class_names[t], []).append(r)
    return out


def per_class(names: list[str], counts: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """(header, rows): each class's query images, accuracy, and the class it is most often
    mistaken for."""
    body = []
    for i, name in enumerate(names):
        total = int(counts[i].sum())
        wrong = counts[i].copy()
        wrong[i] = 0
        worst = names[int(wrong.argmax())] if wrong.any() else "–"
        body.append([name, str(total), f"{counts[i, i] / total:.3f}", worst])
    return ["class", "query images", "accuracy", "most often given instead"], body


def confusion_figure(names: list[str], counts: np.ndarray, title: str, path: Path) -> Path:
    plt = pyplot()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(9.0, 2.5 + 0.35 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=120)
    image = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    if len(names) <= 40:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("given class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the true class's query images")
    fig.tight_layout()
    return save(fig, plt, path)


def predictions_section(rows: list[Row], figures: Path, wanted: Choice | None = None
                        ) -> tuple[list[str], dict[str, Path], dict[str, Grid]]:
    """Markdown lines, figures and tables (for CSV and LaTeX) for the chosen (dataset, method,
    ways); rows with no stored predictions get one line saying so."""
    chosen = choose(rows, wanted)
    lines = ["## Per-class accuracy and confusion", ""]
    unreadable = sum(1 for r in rows if r.predictions and damaged(r))
    said = [f"{unreadable} row(s) hold damaged predictions (unreadable, or not giving the "
            "row's accuracies) and are left out."] if unreadable else []
    if chosen is None:
        return lines + ["No row holds its test tasks' predictions, so per-class accuracy and a "
                        "confusion matrix cannot be computed: evaluate with `--set "
                        "metatest.save_predictions=true` to keep them.", *said, ""], {}, {}
    d, m, ways = chosen
    mine, others = one_setting([r for r in with_predictions(rows)
                                if (r.dataset_name, r.method, r.ways) == chosen])
    names, counts = confusion(mine)
    tasks = sum(len(r.predictions) for r in mine)
    seeds = sorted({r.seed for r in mine})
    head, body = per_class(names, counts)
    lines += [f"{label(m)} on {d}, {ways}-way: the {tasks} test tasks of seed"
              f"{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} pooled "
              f"({int(counts.sum())} query images); overall "
              f"{np.trace(counts) / counts.sum():.3f} of them given their own class.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in body]
    lines += ["", *said] if said else []
    if others:
        lines += ["", f"{others} other row(s) of {label(m)} on {d}, {ways}-way measured another "
                  "setting (protocol, model, run, shots, split, sampler or alpha) or a seed "
                  "again, and are not pooled with these."]
    lines += ["", "The confusion matrix (rows: true class, columns: given class, each row as "
              "shares of its query images) is under *Figures*, and as counts in "
              "tables/confusion.csv.", ""]
    safe = safe_name(f"{d}-{m}-{ways}")
    png = confusion_figure(names, counts, f"{label(m)} on {d}, {ways}-way",
                           figures / f"confusion-{safe}.png")
    behind = [{0: rows_by_class(mine)[n]} for n in names]
    matrix = Grid(["true \\ given", *names],
                  [[n, *map(str, counts[i])] for i, n in enumerate(names)], behind)
    return lines, {f"confusion-{safe}": png}, {"per-class": Grid(head, body, behind),
                                               "confusion": matrix}
