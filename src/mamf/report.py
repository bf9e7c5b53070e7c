"""Tables and figures from results rows: what a person reads at a glance."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mamf.methods import names as method_names

LOW_ZERO_SHOT = 0.5  # the zero-shot accuracy below which claim 2 calls a dataset "low"
METHOD_LABELS = {"zeroshot": "zero-shot", "classical": "classical FT", "mamf": "MAMF",
                 "fomaml": "FOMAML"}


def pooled(rows: list[dict]) -> dict:
    """(dataset, method) -> mean, 95 % CI and count over all their test tasks."""
    groups: dict[tuple, list[float]] = OrderedDict()
    for r in rows:
        key = (r.get("experiment_dataset", r["dataset"]), r["method"])
        groups.setdefault(key, []).extend(r["task_accs"])
    out = {}
    for key, accs in groups.items():
        a = np.asarray(accs, dtype=float)
        ci = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0
        out[key] = (float(a.mean()), float(ci), len(a))
    return out


def _ordered(rows: list[dict]) -> tuple[list[str], list[str]]:
    datasets = list(OrderedDict.fromkeys(r.get("experiment_dataset", r["dataset"]) for r in rows))
    present = {r["method"] for r in rows}
    return datasets, [m for m in method_names() if m in present]


def summary_table(rows: list[dict]) -> str:
    """A markdown table: one row per dataset, one column per method, mean +- 95 % CI."""
    stats = pooled(rows)
    datasets, methods = _ordered(rows)
    head = "| dataset | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for d in datasets:
        cells = []
        for m in methods:
            if (d, m) in stats:
                mean, ci, n = stats[(d, m)]
                cells.append(f"{mean:.3f} ± {ci:.3f}")
            else:
                cells.append("–")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def settings_line(rows: list[dict]) -> str:
    parts = []
    seen = OrderedDict()
    for r in rows:
        d = r.get("experiment_dataset", r["dataset"])
        seen.setdefault(d, set()).add((r["protocol"], r["ways"], r["shots"], r["queries"],
                                       r["n_tasks"]))
    for d, s in seen.items():
        protocol = sorted(s)[0][0]
        ways = sorted({x[1] for x in s})
        shots = sorted({x[2] for x in s})
        tasks = sum(x[4] for x in s) if len(s) > 1 else sorted(s)[0][4]
        parts.append(f"{d}: {protocol}, {','.join(map(str, ways))}-way, "
                     f"{','.join(map(str, shots))}-shot, {tasks} tasks per method and seed")
    return "; ".join(parts)


def bar_figure(rows: list[dict], path: Path, title: str = "") -> Path:
    """Grouped bars: accuracy per dataset and method with 95 % CI whiskers, chance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = pooled(rows)
    datasets, methods = _ordered(rows)
    fig, ax = plt.subplots(figsize=(1.6 + 2.2 * len(datasets), 3.6), dpi=120)
    width = 0.8 / max(1, len(methods))
    colours = {"zeroshot": "#9e9e9e", "classical": "#1f77b4", "mamf": "#d62728",
               "fomaml": "#2ca02c"}
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, d in enumerate(datasets):
            if (d, m) in stats:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(stats[(d, m)][0])
                es.append(stats[(d, m)][1])
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=METHOD_LABELS[m], color=colours[m])
    for i, d in enumerate(datasets):
        ways = [r["ways"] for r in rows if r.get("experiment_dataset", r["dataset"]) == d]
        chance = float(np.mean([1.0 / w for w in ways]))
        ax.hlines(chance, i - 0.45, i + 0.45, colors="black", linestyles="dotted", linewidth=1)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("query accuracy (mean ± 95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(title or "few-shot accuracy (dotted: chance)")
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    return _save(fig, plt, path)


def _dataset(row: dict) -> str:
    return row.get("experiment_dataset", row["dataset"])


def paired(rows: list[dict], a: str, b: str) -> dict:
    """Per dataset: accuracy of `a` minus `b` over the same test tasks (paired by ways, seed and
    task order), with its mean, 95 % CI, count and a plain verdict."""
    index = {(_dataset(r), r["ways"], r["seed"], r["split"], r["method"]): r for r in rows}
    diffs: dict[str, list[float]] = OrderedDict()
    for (d, ways, seed, split, m), ra in index.items():
        if m != a:
            continue
        rb = index.get((d, ways, seed, split, b))
        if rb is None or len(rb["task_accs"]) != len(ra["task_accs"]):
            continue
        diffs.setdefault(d, []).extend(x - y for x, y in zip(ra["task_accs"], rb["task_accs"]))
    out = {}
    for d, values in diffs.items():
        v = np.asarray(values)
        ci = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("inf")
        mean = float(v.mean())
        if mean - ci > 0:
            verdict = "holds"
        elif mean + ci < 0:
            verdict = "does not hold"
        else:
            verdict = "inconclusive"
        out[d] = {"mean": mean, "ci95": float(ci), "pairs": len(v), "verdict": verdict}
    return out


def curve_figure(rows: list[dict], dataset: str, path: Path) -> Path:
    """Accuracy against task size n, one line per method with its 95 % CI band (paper's form)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"zeroshot": "#9e9e9e", "classical": "#1f77b4", "mamf": "#d62728",
               "fomaml": "#2ca02c"}
    mine = [r for r in rows if _dataset(r) == dataset]
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for m in [m for m in method_names() if any(r["method"] == m for r in mine)]:
        by_n: dict[int, list[float]] = {}
        for r in mine:
            if r["method"] == m:
                by_n.setdefault(r["ways"], []).extend(r["task_accs"])
        ns = sorted(by_n)
        means = np.array([np.mean(by_n[n]) for n in ns])
        cis = np.array([1.96 * np.std(by_n[n], ddof=1) / math.sqrt(len(by_n[n]))
                        if len(by_n[n]) > 1 else 0.0 for n in ns])
        ax.plot(ns, means, marker="o", color=colours[m], label=METHOD_LABELS[m])
        ax.fill_between(ns, means - cis, means + cis, color=colours[m], alpha=0.18)
    ns_all = sorted({r["ways"] for r in mine})
    ax.plot(ns_all, [1 / n for n in ns_all], color="black", linestyle="dotted", label="chance")
    ax.set_xticks(ns_all)
    ax.set_xlabel("task size n (ways)")
    ax.set_ylabel("query accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(dataset)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


def fomaml_figure(rows: list[dict], path: Path) -> Path:
    """FOMAML's paired gain over zero-shot against zero-shot accuracy, one point per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gains = paired(rows, "fomaml", "zeroshot")
    stats = pooled(rows)
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for d, g in gains.items():
        x = stats[(d, "zeroshot")][0]
        ax.errorbar([x], [g["mean"]], yerr=[g["ci95"]], fmt="o", capsize=3, color="#2ca02c")
        ax.annotate(d, (x, g["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("zero-shot accuracy")
    ax.set_ylabel("FOMAML − zero-shot (paired, 95% CI)")
    ax.set_title("Does FOMAML help only where zero-shot is high?")
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def claims_markdown(rows: list[dict]) -> str:
    lines = ["## The paper's claims on this data", "",
             "**Claim 1: MAMF beats classical fine-tuning.** Paired over the same test tasks:", "",
             "| dataset | MAMF − classical | pairs | verdict |", "|---|---|---|---|"]
    for d, g in paired(rows, "mamf", "classical").items():
        lines.append(f"| {d} | {g['mean']:+.3f} ± {g['ci95']:.3f} | {g['pairs']} | "
                     f"{g['verdict']} |")
    stats = pooled(rows)
    lines += ["", "**Claim 2: FOMAML helps only where zero-shot accuracy is already high; where "
              f"it is low (below {LOW_ZERO_SHOT:.2f} here), MAMF beats FOMAML.**", "",
              "| dataset | zero-shot | FOMAML − zero-shot | MAMF − FOMAML | what the claim expects "
              "| verdict |", "|---|---|---|---|---|---|"]
    gains = paired(rows, "fomaml", "zeroshot")
    mamf_gain = paired(rows, "mamf", "fomaml")
    held = []
    for d, g in gains.items():
        z = stats[(d, "zeroshot")][0]
        m = mamf_gain.get(d)
        m_text = f"{m['mean']:+.3f} ± {m['ci95']:.3f}" if m else "–"
        if z < LOW_ZERO_SHOT:
            expect, verdict = "MAMF beats FOMAML", m["verdict"] if m else "no MAMF rows"
        else:
            expect, verdict = "FOMAML helps", g["verdict"]
        held.append(verdict)
        lines.append(f"| {d} | {z:.3f} | {g['mean']:+.3f} ± {g['ci95']:.3f} | {m_text} | "
                     f"{expect} | {verdict} |")
    low_helped = [d for d, g in gains.items()
                  if stats[(d, "zeroshot")][0] < LOW_ZERO_SHOT and g["verdict"] == "holds"]
    if held:
        lines += ["", f"The claim's expectation holds on {held.count('holds')} of {len(held)} "
                  "dataset(s)."]
    if low_helped:
        lines.append(f"FOMAML nevertheless improves on zero-shot where zero-shot is low: "
                     f"{', '.join(low_helped)} (it helps *not only* where zero-shot is high).")
    lines += ["", "Verdicts: *holds* when the 95 % CI of the paired difference lies above 0, "
              "*does not hold* when below, *inconclusive* when it straddles 0."]
    return "\n".join(lines)


def write_report(rows: list[dict], out: Path, title: str = "mamf report") -> dict[str, Path]:
    """report.md, report.html (figures embedded) and the PNGs, in `out`."""
    import base64
    import html

    from mamf.report_samplers import baseline_rows, samplers_section

    rows, every_row = baseline_rows(rows), rows  # the paper's tables: uniform sampling
    out = Path(out)
    figures = out / "figures"
    pngs = {"summary": bar_figure(rows, figures / "summary.png", title)}
    for d in OrderedDict.fromkeys(_dataset(r) for r in rows):
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in d)
        pngs[f"curve-{safe}"] = curve_figure(rows, d, figures / f"curve-{safe}.png")
    if any(r["method"] == "fomaml" for r in rows) and any(r["method"] == "zeroshot"
                                                         for r in rows):
        pngs["fomaml"] = fomaml_figure(rows, figures / "fomaml-vs-zeroshot.png")
    hosts = sorted({r.get("host", "?") for r in every_row})
    md = [f"# {title}", "", f"{len(every_row)} result rows; hosts: {', '.join(hosts)}.", "",
          "## Accuracy (mean ± 95 % CI over all test tasks)", "", summary_table(rows), "",
          f"Settings: {settings_line(rows)}.", "", claims_markdown(rows), "",
          *samplers_section(every_row), "", "## Figures", ""]
    for name, p in pngs.items():
        md.append(f"![{name}](figures/{p.name})")
    text = "\n".join(md) + "\n"
    from mamf.io import atomic_write_text

    atomic_write_text(out / "report.md", text)
    body = []
    for line in text.splitlines():
        if line.startswith("![") and "](figures/" in line:
            name = line.split("](figures/")[1].rstrip(")")
            data = base64.b64encode((figures / name).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        else:
            body.append(html.escape(line))
    page = ("<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "pre{white-space:pre-wrap}</style><pre>" + "\n".join(body) + "</pre>")
    atomic_write_text(out / "report.html", page)
    return {"md": out / "report.md", "html": out / "report.html", **pngs}
