"""The report's "Training curves": each trained row's training log (loss per step, and the
dev accuracy where `train.eval_every` logged it), one figure per dataset, one colour per method
and one thin line per seed; rows whose log is not there are counted, not guessed."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from mamf.engine.trainlog import read_csv
from mamf.report.common import colour, in_order, label, safe_name
from mamf.report.figures import pyplot, save
from mamf.report.files import train_log_path
from mamf.results import Row
from mamf.system.errors import MamfError


def _logs(rows: list[Row], folder: Path | None) -> tuple[dict, int]:
    """(dataset, method) -> {log path: its rows}, one per training (rows sharing a log are one
    training scored at several task sizes), and how many trained rows had no readable log."""
    out: dict = OrderedDict()
    missing = 0
    for r in rows:
        if r.train_steps is None and not r.run:
            continue  # nothing was trained for this row
        path = train_log_path(r, folder)
        if path is None:
            missing += 1
            continue
        per = out.setdefault((r.dataset_name, r.method), OrderedDict())
        if path not in per:
            try:
                per[path] = read_csv(path)
            except (OSError, ValueError, KeyError, MamfError):
                missing += 1
    return out, missing


def curves_figure(logs: dict, dataset: str, path: Path) -> Path:
    plt = pyplot()
    mine = {m: per for (d, m), per in logs.items() if d == dataset}
    dev = any(x["dev_acc"] is not None for per in mine.values() for log in per.values()
              for x in log)
    fig, axes = plt.subplots(1, 2 if dev else 1, figsize=(10.4 if dev else 5.2, 3.6), dpi=120,
                             squeeze=False)
    for m in in_order(mine):
        for j, log in enumerate(mine[m].values()):
            name = label(m) if j == 0 else None
            axes[0][0].plot([x["step"] for x in log], [x["loss"] for x in log], color=colour(m),
                            linewidth=0.9, alpha=0.8, label=name)
            points = [(x["step"], x["dev_acc"]) for x in log if x["dev_acc"] is not None]
            if dev and points:
                axes[0][1].plot(*zip(*points), marker="o", markersize=3, color=colour(m),
                                linewidth=0.9, label=name)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_xlabel("training step")
    axes[0][0].set_ylabel("training loss")
    axes[0][0].set_title(f"{dataset}: training loss (one line per seed)")
    axes[0][0].legend(fontsize=7)
    if dev:
        axes[0][1].set_xlabel("training step")
        axes[0][1].set_ylabel("dev accuracy (no adaptation)")
        axes[0][1].set_ylim(0, 1.02)
        axes[0][1].set_title(f"{dataset}: dev accuracy")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, plt, path)


def curves_section(rows: list[Row], folder: Path | None,
                   figures: Path) -> tuple[list[str], dict[str, Path]]:
    """Markdown lines and figures; nothing when no row was trained."""
    trained = [r for r in rows if r.train_steps is not None or r.run]
    if not trained:
        return [], {}
    logs, missing = _logs(trained, folder)
    lines = ["## Training curves", ""]
    pngs = {}
    for d in OrderedDict.fromkeys(d for d, _ in logs):
        pngs[f"training-{safe_name(d)}"] = curves_figure(logs, d, figures /
                                                         f"training-{safe_name(d)}.png")
    if pngs:
        lines += ["Training loss per step from each training's log (train_log.csv); the dev "
                  "accuracy where the training logged it (`train.eval_every`). Figures under "
                  "*Figures*.", ""]
    if missing:
        lines += [f"{missing} of {len(trained)} trained rows have no training log beside them "
                  "(written before grids kept train_logs/, or their run folder is elsewhere): "
                  "their curves cannot be drawn.", ""]
    return lines, pngs
