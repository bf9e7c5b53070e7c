"""Tables and figures from results rows: what a person reads at a glance.

Every comparison is made over *cells*, (dataset, ways, shots, seed, split): a method's figure on
a dataset pools its test tasks over the cells that every compared method has, so no method is
credited or blamed for task sizes or seeds another did not run. Rows outside those cells are
listed apart, and the report says so. report.md is the text; report.html is the same text
rendered as a self-contained page (tables, figures inline, no network).
"""

from __future__ import annotations

import base64
import html
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamf.io import atomic_write_text, make_folder, writing
from mamf.methods import REGISTRY
from mamf.methods import names as method_names
from mamf.results import dataset_name
from mamf.stats import PairedDifference, mean_ci95, paired_difference

LOW_ZERO_SHOT = 0.5  # the zero-shot accuracy below which claim 2 calls a dataset "low"


def label(method: str) -> str:
    """How tables name a method: its registered label, else its name as rows spell it; a trained
    run scored by a baseline (`mamf+tip-adapter`) reads `MAMF + Tip-Adapter`."""
    if method not in REGISTRY and "+" in method:
        return " + ".join(label(part) for part in method.split("+"))
    return REGISTRY[method].label if method in REGISTRY else method


def colour(method: str) -> str:
    return REGISTRY[method].colour if method in REGISTRY else "#7f7f7f"


def method_order() -> list[str]:
    """Registered methods in table order."""
    return list(method_names())


def in_order(present) -> list[str]:
    """The methods in `present` in table order; any not registered here come last, by name."""
    order = method_order()
    return [m for m in order if m in present] + sorted(m for m in present if m not in order)


def _rank(method: str) -> tuple:
    order = method_order()
    return (order.index(method), "") if method in order else (len(order), method)

Cell = tuple  # (dataset, ways, shots, seed, split): what two methods must share to be compared


def cell_of(row: dict) -> Cell:
    return (dataset_name(row), row["ways"], row["shots"], row["seed"], row["split"])


def _labels(methods: Sequence[str]) -> str:
    names = [label(m) for m in methods]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _numbers(values) -> str:
    return ",".join(map(str, sorted(set(values))))


@dataclass
class Comparison:
    """Rows split into those compared (each dataset over the cells all its compared methods
    have, one row per method and cell) and those left apart, each with the reason why."""

    compared: list[dict]
    apart: list[tuple[dict, str]]


def _one_per_cell(rows: list[dict]) -> tuple[dict[tuple[Cell, str], dict], list[tuple[dict, str]]]:
    """(cell, method) -> its first row; a second row of a method in a cell (another model or
    run) is set apart rather than pooled, so no task is counted twice."""
    index: dict[tuple[Cell, str], dict] = {}
    apart = []
    for r in rows:
        key = (cell_of(r), r["method"])
        if key in index:
            first = index[key]
            other = [f"{f} {r.get(f)}" for f in ("model", "run") if r.get(f) != first.get(f)]
            apart.append((r, f"a second {label(r['method'])} row for this cell"
                          + (f" ({', '.join(other)})" if other else "")))
        else:
            index[key] = r
    return index, apart


def compare(rows: list[dict], methods: Sequence[str] | None = None) -> Comparison:
    """Keep, per dataset, the rows of `methods` (default: every method the dataset has) in the
    cells that all of those methods have; set the other rows of those methods apart."""
    index, apart = _one_per_cell(rows)
    have: dict[str, dict[str, set]] = {}
    for c, m in index:
        have.setdefault(c[0], {}).setdefault(m, set()).add(c)
    compared = []
    for (c, m), r in index.items():
        wanted = list(methods) if methods is not None else in_order(have[c[0]])
        if m not in wanted:
            continue
        holders = [x for x in wanted if c in have[c[0]].get(x, ())]
        if len(holders) == len(wanted):
            compared.append(r)
        else:
            apart.append((r, f"only {_labels(holders)} {'has' if len(holders) == 1 else 'have'} "
                          "this cell"))
    if methods is not None:
        apart = [(r, why) for r, why in apart if r["method"] in methods]
    return Comparison(compared, apart)


def pooled(rows: list[dict]) -> dict:
    """(dataset, method) -> mean, 95 % CI and count over all their test tasks."""
    groups: dict[tuple, list[float]] = OrderedDict()
    for r in rows:
        groups.setdefault((dataset_name(r), r["method"]), []).extend(r["task_accs"])
    return {key: (*mean_ci95(accs), len(accs)) for key, accs in groups.items()}


def _ordered(rows: list[dict]) -> tuple[list[str], list[str]]:
    datasets = list(OrderedDict.fromkeys(dataset_name(r) for r in rows))
    present = {r["method"] for r in rows}
    return datasets, in_order(present)


def summary_table(rows: list[dict]) -> str:
    """A markdown table: one row per dataset, one column per method, mean ± 95 % CI over the
    cells every method of the dataset has."""
    stats = pooled(compare(rows).compared)
    datasets, methods = _ordered(rows)
    head = "| dataset | " + " | ".join(label(m) for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for d in datasets:
        cells = []
        for m in methods:
            if (d, m) in stats:
                mean, ci, n = stats[(d, m)]
                cells.append(f"{mean:.3f} ± {ci:.3f}")
            else:
                cells.append("–")
        lines.append(f"| {_md(d)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _describe_cells(rows: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rows})
    tasks = sorted({sum(len(r["task_accs"]) for r in rows if r["method"] == m)
                    for m in {r["method"] for r in rows}})
    counts = str(tasks[0]) if len(tasks) == 1 else f"{tasks[0]} to {tasks[-1]}"
    return (f"{_numbers(r['ways'] for r in rows)}-way, {_numbers(r['shots'] for r in rows)}-shot, "
            f"seed{'s' if len(seeds) > 1 else ''} {_numbers(seeds)}, "
            f"{', '.join(sorted({r['split'] for r in rows}))} split, {counts} tasks per method")


def comparison_note(rows: list[dict]) -> str:
    """What the table compares, when some rows are left out of it; '' when none is."""
    comp = compare(rows)
    if not comp.apart:
        return ""
    datasets, _ = _ordered(rows)
    left = {dataset_name(r) for r, _ in comp.apart}
    parts = []
    for d in datasets:
        if d not in left:
            continue
        mine = [r for r in comp.compared if dataset_name(r) == d]
        parts.append(f"{d}: {_describe_cells(mine)}" if mine
                     else f"{d}: none, its methods share no cell")
    return ("Each dataset is compared only over the cells (ways, shots, seed, split) that all its "
            f"methods have: {'; '.join(parts)}. The {len(comp.apart)} row(s) outside them are "
            "listed under *Not compared*.")


def not_compared_markdown(rows: list[dict]) -> str:
    """The rows left out of every comparison, grouped by dataset, method and cell; '' if none."""
    groups: dict[tuple, list[dict]] = OrderedDict()
    for r, why in compare(rows).apart:
        key = (dataset_name(r), _rank(r["method"]), r["ways"], r["shots"], r["split"], why)
        groups.setdefault(key, []).append(r)
    if not groups:
        return ""
    lines = ["## Not compared", "",
             "These rows have no counterpart in every other method of their dataset (or repeat "
             "a method's cell), so the table, the summary figure and the claims leave them out:",
             "", "| dataset | method | ways | shots | seeds | split | tasks | accuracy | why |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (d, m, ways, shots, split, why), rs in sorted(groups.items(), key=lambda kv: kv[0][:5]):
        accs = [a for r in rs for a in r["task_accs"]]
        mean, ci = mean_ci95(accs)
        lines.append(f"| {_md(d)} | {label(m[1] or method_order()[m[0]])} | {ways} | {shots} | "
                     f"{_numbers(r['seed'] for r in rs)} | {_md(split)} | {len(accs)} | "
                     f"{mean:.3f} ± {ci:.3f} | {_md(why)} |")
    return "\n".join(lines)


def _task_counts(rows: list[dict]) -> str:
    """Tasks per seed (and split) of one method's rows, a cell counted once: '95', '10 to 95'."""
    per: dict[tuple, int] = {}
    for r in _one_per_cell(rows)[0].values():
        per[(r["seed"], r["split"])] = per.get((r["seed"], r["split"]), 0) + r["n_tasks"]
    counts = sorted(set(per.values()))
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def settings_line(rows: list[dict]) -> str:
    """Per dataset: protocol, task sizes, shots and tasks per seed, method by method where
    the methods differ."""
    parts = []
    datasets, methods = _ordered(rows)
    for d in datasets:
        mine = [r for r in rows if dataset_name(r) == d]
        protocol = ",".join(sorted({r["protocol"] for r in mine}))
        shapes = OrderedDict()
        for m in methods:
            own = [r for r in mine if r["method"] == m]
            if own:
                shapes[m] = (_numbers(r["ways"] for r in own), _numbers(r["shots"] for r in own),
                             _task_counts(own), _numbers(r["seed"] for r in own))
        if len(set(shapes.values())) == 1:
            ways, shots, tasks, _ = next(iter(shapes.values()))
            parts.append(f"{d}: {protocol}, {ways}-way, {shots}-shot, {tasks} tasks per method "
                         "and seed")
            continue
        shots = {s[1] for s in shapes.values()}
        seeds = {s[3] for s in shapes.values()}
        each = []
        for m, (ways, own_shots, tasks, own_seeds) in shapes.items():
            own = f" {own_shots}-shot" if len(shots) > 1 else ""
            seeded = (f" (seed{'s' if ',' in own_seeds else ''} {own_seeds})"
                      if len(seeds) > 1 else "")
            each.append(f"{label(m)} at {ways}-way{own} with {tasks} tasks per seed{seeded}")
        common = f", {next(iter(shots))}-shot" if len(shots) == 1 else ""
        parts.append(f"{d}: {protocol}{common}, {', '.join(each[:-1])} and {each[-1]}")
    return "; ".join(parts)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_figure(rows: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: accuracy per dataset and method with 95 % CI whiskers over the cells all
    the dataset's methods have, chance marked."""
    plt = _pyplot()
    compared = compare(rows).compared
    stats = pooled(compared)
    datasets, methods = _ordered(rows)
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(datasets), 3.6), dpi=120)
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, d in enumerate(datasets):
            if (d, m) in stats:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(stats[(d, m)][0])
                es.append(stats[(d, m)][1])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=label(m), color=colour(m))
    for i, d in enumerate(datasets):
        ways = [r["ways"] for r in compared if dataset_name(r) == d]
        if ways:
            chance = float(np.mean([1.0 / w for w in ways]))
            ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("query accuracy (mean ± 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title or "few-shot accuracy (dotted: chance)")
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return _save(fig, plt, path)


def paired(rows: list[dict], a: str, b: str) -> dict[str, PairedDifference]:
    """Per dataset: accuracy of `a` minus `b` over the same test tasks, i.e. over the cells
    both have (paired by cell and task order), with its 95 % CI and verdict."""
    index, _ = _one_per_cell(rows)
    xs: dict[str, list[float]] = OrderedDict()
    ys: dict[str, list[float]] = OrderedDict()
    for (c, m), ra in index.items():
        rb = index.get((c, b)) if m == a else None
        if rb is None or len(rb["task_accs"]) != len(ra["task_accs"]):
            continue
        xs.setdefault(c[0], []).extend(ra["task_accs"])
        ys.setdefault(c[0], []).extend(rb["task_accs"])
    return {d: paired_difference(xs[d], ys[d]) for d in xs}


def method_lines(ax, by: dict[str, dict]) -> None:
    """One line per method through the mean accuracy at each x, in a band of its 95 % CI;
    `by[method][x]` holds the per-task accuracies."""
    for m in in_order(by):
        xs = sorted(by[m])
        means, cis = np.array([mean_ci95(by[m][x]) for x in xs]).T
        ax.plot(xs, means, marker="o", color=colour(m), label=label(m))
        ax.fill_between(xs, means - cis, means + cis, color=colour(m), alpha=0.18)


def curve_figure(rows: list[dict], dataset: str, path: Path) -> Path:
    """Accuracy against task size n, one line per method with its 95 % CI band (paper's form).
    At each n the methods are compared over the (shots, seed, split) cells they all have."""
    plt = _pyplot()
    mine = [r for r in rows if dataset_name(r) == dataset]
    ns_all = sorted({r["ways"] for r in mine})
    by: dict[str, dict[int, list[float]]] = {}
    for n in ns_all:
        for r in compare([r for r in mine if r["ways"] == n]).compared:
            by.setdefault(r["method"], {}).setdefault(n, []).extend(r["task_accs"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    method_lines(ax, by)
    ax.plot(ns_all, [1 / n for n in ns_all], color="black", linestyle="dotted", label="chance")
    ax.set_xticks(ns_all)
    ax.set_xlabel("task size n (ways)")
    ax.set_ylabel("query accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(dataset)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


@dataclass
class Claim2:
    """Claim 2 on one dataset, over the cells zero-shot, FOMAML (and MAMF, if it ran) share."""

    dataset: str
    zero_shot: float
    fomaml_gain: PairedDifference
    mamf_gain: PairedDifference | None
    expect: str
    verdict: str


def claim2(rows: list[dict]) -> list[Claim2]:
    """The datasets on which claim 2 can be judged, in report order."""
    out = []
    for d in _ordered(rows)[0]:
        mine = [r for r in rows if dataset_name(r) == d]
        needed = _claim2_methods(mine)
        shared = compare(mine, needed).compared
        gain = paired(shared, "fomaml", "zeroshot").get(d)
        if gain is None:
            continue
        z = pooled(shared)[(d, "zeroshot")][0]
        m = paired(shared, "mamf", "fomaml").get(d)
        if z < LOW_ZERO_SHOT:
            expect, verdict = "MAMF beats FOMAML", m.verdict if m else "no MAMF rows"
        else:
            expect, verdict = "FOMAML helps", gain.verdict
        out.append(Claim2(d, z, gain, m, expect, verdict))
    return out


def _claim2_methods(rows: list[dict]) -> list[str]:
    return ["zeroshot", "fomaml"] + (["mamf"] if any(r["method"] == "mamf" for r in rows) else [])


def fomaml_figure(rows: list[dict], path: Path) -> Path:
    """FOMAML's paired gain over zero-shot against zero-shot accuracy, one point per dataset."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for c in claim2(rows):
        g = c.fomaml_gain
        ax.errorbar([c.zero_shot], [g.mean], yerr=[g.ci95], fmt="o", capsize=3, color="#2ca02c")
        ax.annotate(c.dataset, (c.zero_shot, g.mean), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("zero-shot accuracy")
    ax.set_ylabel("FOMAML − zero-shot (paired, 95% CI)")
    ax.set_title("Does FOMAML help only where zero-shot is high?")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        with writing(path):
            fig.savefig(tmp)
            tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _why_not(rows: list[dict], needed: Sequence[str], where: str) -> str:
    """Why a claim needing `needed` cannot be judged on `rows` ('there' or 'here')."""
    missing = [m for m in needed if not any(r["method"] == m for r in rows)]
    if missing:
        return f"there are no {_labels(missing)} results {where}"
    return f"{_labels(needed)} share no (ways, shots, seed, split) cell with equally many tasks"


def _not_judged(rows: list[dict], judged: set[str], needed) -> list[str]:
    """One sentence naming the datasets a claim skips, and why; none when it skips none."""
    skipped = []
    for d in _ordered(rows)[0]:
        if d not in judged:
            mine = [r for r in rows if dataset_name(r) == d]
            skipped.append(f"{d} ({_why_not(mine, needed(mine), 'there')})")
    return [f"Not judged on {'; '.join(skipped)}."] if skipped else []


def claims_markdown(rows: list[dict]) -> str:
    lines = ["## The paper's claims on this data", ""]
    head1 = "**Claim 1: MAMF beats classical fine-tuning.**"
    claim1 = paired(rows, "mamf", "classical")
    if claim1:
        lines += [f"{head1} Paired over the same test tasks:", "",
                  "| dataset | MAMF − classical | pairs | verdict |", "|---|---|---|---|"]
        for d, g in claim1.items():
            lines.append(f"| {_md(d)} | {g.mean:+.3f} ± {g.ci95:.3f} | {g.pairs} | {g.verdict} |")
        lines += ["", *_not_judged(rows, set(claim1), lambda _: ["mamf", "classical"])]
        lines += [""] if lines[-1] else []
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
    lines += [head2, "", "| dataset | zero-shot | FOMAML − zero-shot | MAMF − FOMAML | "
              "what the claim expects | verdict |", "|---|---|---|---|---|---|"]
    for c in judged:
        g, m = c.fomaml_gain, c.mamf_gain
        m_text = f"{m.mean:+.3f} ± {m.ci95:.3f}" if m else "–"
        lines.append(f"| {_md(c.dataset)} | {c.zero_shot:.3f} | {g.mean:+.3f} ± {g.ci95:.3f} | "
                     f"{m_text} | {c.expect} | {c.verdict} |")
    held = [c.verdict for c in judged]
    lines += ["", f"The claim's expectation holds on {held.count('holds')} of {len(held)} "
              "dataset(s)."]
    low_helped = [c.dataset for c in judged
                  if c.zero_shot < LOW_ZERO_SHOT and c.fomaml_gain.verdict == "holds"]
    if low_helped:
        lines.append(f"FOMAML nevertheless improves on zero-shot where zero-shot is low: "
                     f"{', '.join(low_helped)} (it helps *not only* where zero-shot is high).")
    lines += _not_judged(rows, {c.dataset for c in judged}, _claim2_methods)
    lines += ["", "Verdicts: *holds* when the 95 % CI of the paired difference lies above 0, "
              "*does not hold* when below, *inconclusive* when it straddles 0."]
    return "\n".join(lines)


def report_markdown(rows: list[dict], title: str, figures: dict[str, Path],
                    extra: list[str] | None = None) -> str:
    """The whole report as markdown; `figures` (name -> PNG in the report's figures/ folder)
    are linked relative to the report's folder; `extra`: more sections' lines before them."""
    hosts = sorted({str(r.get("host", "?")) for r in rows})
    note = comparison_note(rows)
    over = "the test tasks every method has" if note else "all test tasks"
    md = [f"# {title}", "", f"{len(rows)} result rows; hosts: {', '.join(hosts)}.", "",
          f"## Accuracy (mean ± 95 % CI over {over})", "", summary_table(rows), ""]
    if note:
        md += [note, ""]
    md += [f"Settings: {settings_line(rows)}.", ""]
    apart = not_compared_markdown(rows)
    if apart:
        md += [apart, ""]
    md += [claims_markdown(rows), ""]
    if extra:
        md += [*extra, ""]
    md += ["## Figures", ""]
    md += [f"![{name}](figures/{p.name})" for name, p in figures.items()]
    return "\n".join(md) + "\n"


def pooled_rows(rows: list[dict]) -> list[dict]:
    """The rows whose task accuracies pool into the method tables: all but base2novel's, whose
    two tasks (base, novel) are summarised by their harmonic mean in their own section."""
    return [r for r in rows if r["protocol"] != "base2novel"]


def write_report(rows: list[dict], out: Path, title: str = "mamf report") -> dict[str, Path]:
    """report.md, report.html (figures embedded) and the PNGs, in `out`."""
    from mamf.report_fewshot import fewshot_section
    from mamf.report_overfitting import main_rows, overfitting_sections
    from mamf.report_samplers import baseline_rows, samplers_section

    every_row = rows
    # the paper's tables: uniform sampling, held-out tasks, the trained weights unmixed
    rows = main_rows(baseline_rows(rows))
    out = Path(out)
    figures = out / "figures"
    overfitting, overfitting_pngs = overfitting_sections(every_row, figures)
    fewshot, fewshot_pngs = fewshot_section(rows, figures)
    rows = pooled_rows(rows)
    if not rows:  # base2novel alone: its own section is the report
        text = "\n".join([f"# {title}", "", *fewshot])
        atomic_write_text(out / "report.md", text)
        images = {f"figures/{p.name}": p.read_bytes() for p in fewshot_pngs.values()}
        atomic_write_text(out / "report.html", markdown_html(text, title, images))
        return {"md": out / "report.md", "html": out / "report.html", **fewshot_pngs}
    pngs = {"summary": bar_figure(rows, figures / "summary.png", title)}
    for d in _ordered(rows)[0]:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in d)
        pngs[f"curve-{safe}"] = curve_figure(rows, d, figures / f"curve-{safe}.png")
    if claim2(rows):
        pngs["fomaml"] = fomaml_figure(rows, figures / "fomaml-vs-zeroshot.png")
    pngs.update(fewshot_pngs)
    pngs.update(overfitting_pngs)
    extra = samplers_section(main_rows(every_row)) + fewshot + \
        ([""] if overfitting else []) + overfitting
    text = report_markdown(rows, title, pngs, extra)
    atomic_write_text(out / "report.md", text)
    images = {f"figures/{p.name}": p.read_bytes() for p in pngs.values()}
    atomic_write_text(out / "report.html", markdown_html(text, title, images))
    return {"md": out / "report.md", "html": out / "report.html", **pngs}


# --- report.md as a self-contained HTML page ------------------------------------------------
# A renderer of our own for the few markdown forms the report is written in (headings,
# paragraphs, pipe tables, images, **bold**, *italic*, `code`): the report controls its text,
# so a general markdown dependency would add nothing but an install.

STYLE = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;
 max-width:64em;margin:2em auto;padding:0 1.5em}
h1{font-size:1.7em;margin:.2em 0 .6em}h2{font-size:1.3em;margin:1.6em 0 .5em;
 border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:.3em .7em;text-align:left;vertical-align:top}
th{background:#f2f2f2}tbody tr:nth-child(even){background:#fafafa}
th.num,td.num{text-align:right}
.figures{display:flex;flex-wrap:wrap;gap:1em;margin:1em 0}
figure{flex:0 1 calc(50% - .5em);min-width:20em;margin:0}figure.wide{flex-basis:100%}
img{width:100%;height:auto;border:1px solid #eee}code{background:#f2f2f2;padding:0 .2em}
"""
_INLINE = [(re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"\*(.+?)\*"), r"<em>\1</em>"),
           (re.compile(r"`(.+?)`"), r"<code>\1</code>")]
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return out


def _table_cells(line: str) -> list[str]:
    """The cells of one pipe-table line; `\\|` is a literal pipe."""
    line = line.strip()
    cells, current, chars = [], "", iter(line)
    for ch in chars:
        if ch == "\\":
            current += next(chars, "")
        elif ch == "|":
            cells.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():  # no closing pipe
        cells.append(current.strip())
    return cells[1:] if line.startswith("|") else cells


NUM = ' class="num"'
_NUMBER = re.compile(r"[+\-−]?\d[\d.,]*( ± [\d.]+)?|–")


def _table(lines: list[str]) -> str:
    """A pipe table as <table>; columns holding only numbers are aligned right."""
    head, body = _table_cells(lines[0]), [_table_cells(x) for x in lines[2:]]
    right = [bool(body) and all(i < len(r) and _NUMBER.fullmatch(r[i]) for r in body)
             for i in range(len(head))]

    def cells(tag: str, row: list[str]) -> str:
        return "".join(f"<{tag}{NUM if i < len(right) and right[i] else ''}>{_inline(c)}</{tag}>"
                       for i, c in enumerate(row))

    trs = "".join(f"<tr>{cells('td', row)}</tr>" for row in body)
    return f"<table><thead><tr>{cells('th', head)}</tr></thead><tbody>{trs}</tbody></table>"


def _is_separator(line: str) -> bool:
    return bool(re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", line.strip()))


def _figure(alt: str, src: str, images: dict[str, bytes]) -> str:
    """One PNG inline as base64; wide ones (the summary) take a row of their own."""
    png = images.get(src)
    if png is None:
        return f"<p>[figure {html.escape(alt)}: {html.escape(src)} missing]</p>"
    wide = png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") > 800
    data = base64.b64encode(png).decode("ascii")
    tag = '<figure class="wide">' if wide else "<figure>"
    return f'{tag}<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def markdown_html(text: str, title: str, images: dict[str, bytes]) -> str:
    """The report's markdown as one HTML page; each image named in `images` is inlined as a
    base64 PNG, so the page needs no other file and no network."""
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"(#{1,6}) (.*)", line):
            level = len(m.group(1))
            blocks.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and _is_separator(lines[i + 1]):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            blocks.append(_table(lines[i:j]))
            i = j
        elif _IMAGE.fullmatch(line.strip()):
            j = i
            while j < len(lines) and _IMAGE.fullmatch(lines[j].strip()):
                j += 1
            figures = [_figure(*_IMAGE.fullmatch(x.strip()).groups(), images) for x in lines[i:j]]
            blocks.append('<div class="figures">' + "".join(figures) + "</div>")
            i = j
        else:
            j = i
            while (j < len(lines) and lines[j].strip() and not lines[j].startswith(("#", "|"))
                   and not _IMAGE.fullmatch(lines[j].strip())):
                j += 1
            blocks.append("<p>" + "<br>\n".join(_inline(x) for x in lines[i:j]) + "</p>")
            i = j
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(blocks) + "\n</body></html>\n")
