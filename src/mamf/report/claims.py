"""The paper's two claims, judged on the rows with the report's one set of statistics: paired
seed-level estimates (`mamf.stats`), Holm-adjusted across the datasets a claim is judged on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mamf import stats
from mamf.report.common import holm_line, labels, md
from mamf.report.compare import compare, method_estimates, ordered, paired, paired_tasks
from mamf.results import Row
from mamf.stats import Estimate

LOW_ZERO_SHOT = 0.5  # the zero-shot accuracy below which claim 2 calls a dataset "low"


@dataclass
class Claim2:
    """Claim 2 on one dataset, over the cells zero-shot, FOMAML (and MAMF, if it ran) share.
    `verdict` is Holm-adjusted over the datasets judged."""

    dataset: str
    zero_shot: float
    fomaml_gain: Estimate
    mamf_gain: Estimate | None
    expect: str
    verdict: str


def _claim2_methods(rows: list[Row]) -> list[str]:
    return ["zeroshot", "fomaml"] + (["mamf"] if any(r.method == "mamf" for r in rows) else [])


def claim2(rows: list[Row]) -> list[Claim2]:
    """The datasets on which claim 2 can be judged, in report order."""
    found = []
    for d in ordered(rows)[0]:
        mine = [r for r in rows if r.dataset_name == d]
        shared = compare(mine, _claim2_methods(mine)).compared
        gain = paired(shared, "fomaml", "zeroshot").get(d)
        if gain is None:
            continue
        z = method_estimates(shared)[(d, "zeroshot")].mean
        m = paired(shared, "mamf", "fomaml").get(d)
        expect = "MAMF beats FOMAML" if z < LOW_ZERO_SHOT else "FOMAML helps"
        found.append((d, z, gain, m, expect))
    tested = [(i, m if expect == "MAMF beats FOMAML" else gain)
              for i, (_, _, gain, m, expect) in enumerate(found)
              if expect == "FOMAML helps" or m is not None]
    adjusted = dict(zip([i for i, _ in tested], stats.verdicts([e for _, e in tested])))
    return [Claim2(d, z, gain, m, expect, adjusted.get(i, "no MAMF rows"))
            for i, (d, z, gain, m, expect) in enumerate(found)]


@dataclass
class Contrast:
    """How one of claim 2's differences changes from the lowest zero-shot dataset to the
    highest: `change` is its value there minus here (per seed, then t over seeds). `verdict` is
    Holm-adjusted over the contrasts and says whether it moved the way the claim expects."""

    difference: str
    low: Claim2
    high: Claim2
    at_low: Estimate | None  # the difference on each of the two datasets
    at_high: Estimate | None
    change: Estimate
    expect: str  # "rise" or "fall"
    verdict: str


# claim 2's two differences: (label, a, b, how the claim expects a - b to move as zero-shot
# rises, the Claim2 field holding a - b)
CONTRASTS = [("FOMAML − zero-shot", "fomaml", "zeroshot", "rise", "fomaml_gain"),
             ("MAMF − FOMAML", "mamf", "fomaml", "fall", "mamf_gain")]


def _task_differences(rows: list[Row], dataset: str, a: str, b: str) -> dict[int, np.ndarray]:
    """seed -> a − b task by task on `dataset`, over the cells claim 2 compares there."""
    mine = [r for r in rows if r.dataset_name == dataset]
    found = paired_tasks(compare(mine, _claim2_methods(mine)).compared, a, b).get(dataset)
    if found is None:
        return {}
    xs, ys = found
    return {s: np.asarray(xs[s], dtype=np.float64) - np.asarray(ys[s], dtype=np.float64)
            for s in xs}


def claim2_contrasts(rows: list[Row], judged: list[Claim2]) -> list[Contrast]:
    """The claim's contrast, tested: from the judged dataset of lowest zero-shot accuracy to the
    one of highest, where they lie on both sides of LOW_ZERO_SHOT; none otherwise."""
    if not judged:
        return []
    low = min(judged, key=lambda c: c.zero_shot)
    high = max(judged, key=lambda c: c.zero_shot)
    if not low.zero_shot < LOW_ZERO_SHOT <= high.zero_shot:
        return []
    found = []
    for name, a, b, expect, field in CONTRASTS:
        here = _task_differences(rows, low.dataset, a, b)
        there = _task_differences(rows, high.dataset, a, b)
        if set(here) & set(there):
            found.append(Contrast(name, low, high, getattr(low, field), getattr(high, field),
                                  stats.difference(there, here), expect, ""))
    # a verdict of "holds" is a change the claim's way: a fall is tested as its negation
    tested = [c.change if c.expect == "rise" else replace(c.change, mean=-c.change.mean)
              for c in found]
    return [replace(c, verdict=v) for c, v in zip(found, stats.verdicts(tested))]


def _contrast_lines(contrasts: list[Contrast]) -> list[str]:
    if not contrasts:
        return []
    low, high = contrasts[0].low, contrasts[0].high
    lines = ["", f"**The claim's contrast**, from the lowest zero-shot accuracy "
             f"({md(low.dataset)}, {low.zero_shot:.3f}) to the highest ({md(high.dataset)}, "
             f"{high.zero_shot:.3f}): each difference there minus here, per seed, then t over "
             "the seeds.", "",
             f"| difference | at {md(low.dataset)} | at {md(high.dataset)} | change | "
             "the claim expects | verdict |", "|---|---|---|---|---|---|"]
    for c in contrasts:
        at = [stats.interval(x, signed=True) if x else "–" for x in (c.at_low, c.at_high)]
        lines.append(f"| {c.difference} | {at[0]} | {at[1]} | "
                     f"{stats.interval(c.change, signed=True)} | a {c.expect} | "
                     f"{stats.worded(c.verdict, c.change)} |")
    return lines + ["", holm_line(len(contrasts), "the change goes the way the claim expects",
                                  "when it goes the other way")]


def _why_not(rows: list[Row], needed: Sequence[str], where: str) -> str:
    """Why a claim needing `needed` cannot be judged on `rows` ('there' or 'here')."""
    missing = [m for m in needed if not any(r.method == m for r in rows)]
    if missing:
        return f"there are no {labels(missing)} results {where}"
    return f"{labels(needed)} share no (ways, shots, seed, split) cell with equally many tasks"


def _not_judged(rows: list[Row], judged: set[str], needed) -> list[str]:
    """One sentence naming the datasets a claim skips, and why; none when it skips none."""
    skipped = []
    for d in ordered(rows)[0]:
        if d not in judged:
            mine = [r for r in rows if r.dataset_name == d]
            skipped.append(f"{d} ({_why_not(mine, needed(mine), 'there')})")
    return [f"Not judged on {'; '.join(skipped)}."] if skipped else []


def claims_markdown(rows: list[Row]) -> str:
    lines = ["## The paper's claims on this data", ""]
    head1 = "**Claim 1: MAMF beats classical fine-tuning.**"
    claim1 = paired(rows, "mamf", "classical")
    estimates = list(claim1.values())
    if claim1:
        lines += [f"{head1} Paired over the same test tasks:", "",
                  "| dataset | MAMF − classical | seeds | tasks | verdict |",
                  "|---|---|---|---|---|"]
        for (d, g), v in zip(claim1.items(), stats.verdicts(estimates)):
            lines.append(f"| {md(d)} | {stats.interval(g, signed=True)} | {g.seeds} | {g.tasks} "
                         f"| {stats.worded(v, g)} |")
        lines += ["", stats.coverage_line(estimates), holm_line(len(estimates)),
                  *_not_judged(rows, set(claim1), lambda _: ["mamf", "classical"]), ""]
    else:
        lines += [f"{head1} It cannot be judged: "
                  f"{_why_not(rows, ['mamf', 'classical'], 'here')}.", ""]
    head2 = ("**Claim 2: FOMAML helps only where zero-shot accuracy is already high; where it is "
             f"low (below {LOW_ZERO_SHOT:.2f} here), MAMF beats FOMAML.**")
    judged = claim2(rows)
    if not judged:
        lines += [f"{head2} It cannot be judged: "
                  f"{_why_not(rows, _claim2_methods(rows), 'here')}."]
        return "\n".join(lines)
    lines += [head2, "", "| dataset | zero-shot | FOMAML − zero-shot | MAMF − FOMAML | seeds | "
              "tasks | what the claim expects | verdict |", "|---|---|---|---|---|---|---|---|"]
    for c in judged:
        g, m = c.fomaml_gain, c.mamf_gain
        m_text = stats.interval(m, signed=True) if m else "–"
        lines.append(f"| {md(c.dataset)} | {c.zero_shot:.3f} | {stats.interval(g, signed=True)} "
                     f"| {m_text} | {g.seeds} | {g.tasks} | {c.expect} | "
                     f"{stats.worded(c.verdict, g)} |")
    held = [c.verdict for c in judged]
    tested = sum(1 for c in judged if c.verdict != "no MAMF rows")
    lines += ["", f"The claim's expectation holds on {held.count('holds')} of {len(held)} "
              "dataset(s).", stats.coverage_line([c.fomaml_gain for c in judged]),
              holm_line(tested)]
    gains = stats.verdicts([c.fomaml_gain for c in judged])
    low_helped = [c.dataset for c, v in zip(judged, gains)
                  if c.zero_shot < LOW_ZERO_SHOT and v == "holds"]
    if low_helped:
        lines.append(f"FOMAML nevertheless improves on zero-shot where zero-shot is low: "
                     f"{', '.join(low_helped)} (it helps *not only* where zero-shot is high; "
                     "Holm-adjusted over the datasets).")
    if all(c.zero_shot < LOW_ZERO_SHOT for c in judged) or \
            all(c.zero_shot >= LOW_ZERO_SHOT for c in judged):
        side = "below" if judged[0].zero_shot < LOW_ZERO_SHOT else "at or above"
        lines.append(f"Every dataset here has zero-shot accuracy {side} {LOW_ZERO_SHOT:.2f}, so "
                     "only one half of the claim is tested: its contrast, FOMAML's benefit "
                     "rising with zero-shot accuracy, needs datasets on both sides.")
    lines += _not_judged(rows, {c.dataset for c in judged}, _claim2_methods)
    lines += _contrast_lines(claim2_contrasts(rows, judged))
    return "\n".join(lines)
