"""The report's first section: the hypotheses the experiment file declared before it ran
(`mamf.runs.hypotheses`), tested exactly as declared, Holm over all of them. Whether they were
declared in advance is read from the rows (`hypotheses_sha256`), not taken on trust; every
other comparison of the report is exploratory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamf import stats
from mamf.config import load_yaml
from mamf.report.common import label, md
from mamf.report.compare import compare, method_estimates, ordered, paired_tasks
from mamf.report.selection import main_rows
from mamf.results import Row
from mamf.runs.hypotheses import Hypothesis, digest, parse_hypotheses
from mamf.stats import Estimate
from mamf.system.errors import MamfError

EXPLORATORY = ("Every other comparison in this report is **exploratory**: not declared before "
               "the rows were computed, its verdicts Holm-adjusted within its own table only.")


@dataclass
class Test:
    hypothesis: Hypothesis
    where: str  # a dataset, or the datasets a trend runs along
    estimate: Estimate
    verdict: str = ""


def declared(folder: Path | None) -> tuple[list[Hypothesis], str | None]:
    """The hypotheses of the experiment.yaml beside the rows and their hash; none without one.
    Only that section is read, so a file of an older mamf still gives its hypotheses."""
    path = Path(folder) / "experiment.yaml" if folder is not None else None
    if path is None or not path.is_file():
        return [], None
    try:
        raw = load_yaml(path)
        found = parse_hypotheses(raw.get("hypotheses"), list(raw.get("methods") or []),
                                 [str(d) for d in raw.get("datasets") or {}])
    except (MamfError, AttributeError) as e:
        raise MamfError(f"{path}: its hypotheses cannot be read ({e})") from None
    return found, digest(found)


def _differences(rows: list[Row], d: str, a: str, b: str) -> dict | None:
    """seed -> a − b task by task on dataset `d`, over the cells both have."""
    mine = compare([r for r in rows if r.dataset_name == d], [a, b]).compared
    found = paired_tasks(mine, a, b).get(d)
    if found is None:
        return None
    xs, ys = found
    return {s: np.asarray(xs[s], dtype=np.float64) - np.asarray(ys[s], dtype=np.float64)
            for s in xs}


def declared_tests(rows: list[Row], hypotheses: list[Hypothesis]) -> list[Test]:
    """Each hypothesis's tests (one per dataset, or one slope), Holm over all of them; a
    verdict of *holds* is the direction the hypothesis expects. They read the rows every
    comparison of methods reads (`main_rows`: the trained weights on held-out tasks, uniform
    sampling), never a WiSE-FT mix: at alpha 0 every trained method is its starting weights."""
    rows = main_rows(rows)
    datasets = ordered(rows)[0]
    found = []
    for h in hypotheses:
        where = [d for d in datasets if h.datasets is None or d in h.datasets]
        diffs = {d: x for d in where if (x := _differences(rows, d, h.a, h.b))}
        if not h.trend:
            found += [Test(h, d, stats.estimate(x)) for d, x in diffs.items()]
            continue
        axis = {d: [r for r in rows if r.dataset_name == d and r.method == h.along]
                for d in diffs}  # the accuracy of `along` on each dataset: the trend's x
        zero = {d: method_estimates(rs)[(d, h.along)].mean for d, rs in axis.items() if rs}
        try:
            found.append(Test(h, ", ".join(zero), stats.slope(zero, diffs)))
        except ValueError:
            continue
    # "holds" is the expected direction: an expected fall is tested as its negation
    signed = [Estimate(t.estimate.mean * t.hypothesis.sign, t.estimate.ci95, t.estimate.seeds,
                       t.estimate.tasks, t.estimate.level, t.estimate.p, t.estimate.spread)
              for t in found]
    for t, v in zip(found, stats.verdicts(signed)):
        t.verdict = v
    return found


def provenance(rows: list[Row], sha: str | None) -> tuple[bool, str]:
    """(declared in advance, the sentence saying so): every row computed under these
    hypotheses, by the hash each row recorded as it was written."""
    hashes = [r.hypotheses_sha256 for r in rows]
    same = sum(1 for h in hashes if h == sha)
    if rows and same == len(rows):
        return True, (f"**Declared in advance**: all {len(rows)} rows were computed under these "
                      f"hypotheses (sha256 `{sha[:12]}`), as the experiment file states them.")
    return False, (f"**Not declared in advance**: {len(rows) - same} of {len(rows)} rows were "
                   f"computed before these hypotheses (sha256 `{(sha or '')[:12]}`) were "
                   "declared, or under others: treat this section as exploratory too.")


def hypotheses_section(rows: list[Row], folder: Path | None) -> list[str]:
    """The section's markdown lines."""
    found, sha = declared(folder)
    if not found:
        return ["## Declared hypotheses", "",
                "No hypotheses were declared in the experiment file: every comparison in this "
                "report is **exploratory**.", ""]
    advance, said = provenance(rows, sha)
    done = declared_tests(rows, found)
    lines = ["## Declared hypotheses", "", said, "",
             "| hypothesis | declared | on | estimate | seeds | tasks | verdict |",
             "|---|---|---|---|---|---|---|"]
    for t in done:
        h = t.hypothesis
        what = (f"slope of {label(h.a)} − {label(h.b)} against {label(h.along)} accuracy"
                if h.trend else f"{label(h.a)} − {label(h.b)}")
        lines.append(f"| {md(h.name)} | {what}: expect {h.expect} | {md(t.where)} | "
                     f"{stats.interval(t.estimate, signed=True)} | {t.estimate.seeds} | "
                     f"{t.estimate.tasks} | {stats.worded(t.verdict, t.estimate)}"
                     f"{'' if advance else ' (exploratory)'} |")
    untested = [h.name for h in found if not any(t.hypothesis == h for t in done)]
    lines += ["", f"Verdicts are Holm-adjusted over the {len(done)} tests declared (family-wise "
              "error 5 %): *holds* when the difference (or slope) goes the way the hypothesis "
              "expects, *does not hold* when it goes the other way, *inconclusive* otherwise. "
              "A slope is fitted per seed over the datasets' accuracies of the method it runs "
              "along (the mean of that method's seeds on each), then t over the seeds' slopes; "
              "its unit is accuracy per unit of that accuracy."]
    if untested:
        lines.append(f"Not testable on these rows: {', '.join(map(md, untested))} (their "
                     "methods share no cell, or a trend has fewer than 3 datasets).")
    return [*lines, "", EXPLORATORY, ""]
