"""Training logs a user can open during a run: a CSV in the run folder, always, and TensorBoard
scalars where `train.log_dir` (`--tensorboard DIR`) is set.

In an experiment each training writes its own TensorBoard run: a subfolder of `train.log_dir`
named as its `train_logs/` folder (dataset, method, sampler, seed, shots, task size).

Each step logs its loss, the learning rate of the optimiser's first group and the images per
second the step embedded (forward passes through `ModelInputs.images`, cached or not); with
`train.eval_every` set, every that many steps also the dev split's accuracy (`dev_acc`, empty in
the other rows; `mamf.engine.training.dev_accuracy`). The CSV is
flushed every step, so a run that is killed keeps its log; a resumed run drops the rows past its
checkpoint before logging again, so the log holds each step once.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path

from mamf.system.errors import MamfError

log = logging.getLogger(__name__)

CSV_NAME = "train_log.csv"
COLUMNS = ("step", "loss", "lr", "images_per_s", "dev_acc")


class TrainLog:
    """Step scalars to `folder/train_log.csv` and, with `log_dir`, to TensorBoard event files."""

    def __init__(self, folder: Path | None, log_dir: str | None, start: int = 0):
        self.path = Path(folder) / CSV_NAME if folder is not None else None
        self.file: io.TextIOBase | None = None
        self.writer = None
        self.last = time.perf_counter()
        if self.path is not None:
            kept = _rows_up_to(self.path, start)
            self.file = self.path.open("w", encoding="utf-8", newline="")
            self.csv = csv.writer(self.file)
            self.csv.writerow(COLUMNS)
            self.csv.writerows(kept)
            self.file.flush()
        if log_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MamfError("train.log_dir needs TensorBoard: pip install tensorboard") \
                    from None
            try:
                # TensorBoard drops the events at and past purge_step: those after the
                # checkpoint, which this run logs again (the checkpoint's own step stays)
                self.writer = SummaryWriter(log_dir=str(Path(log_dir).expanduser()),
                                            purge_step=start + 1 if start else None)
            except OSError as e:
                raise MamfError(f"cannot write TensorBoard logs to {log_dir}: "
                                f"{e.strerror or e}") from None

    def step(self, step: int, loss: float, lr: float | None, images: int,
             dev_acc: float | None = None) -> None:
        """Log step `step` (1-based: the optimiser steps taken) that embedded `images` images;
        `dev_acc`: the dev accuracy after it, where one was measured."""
        self.steps([(step, loss, lr, images, dev_acc)])

    def steps(self, rows: list[tuple[int, float, float | None, int, float | None]]) -> None:
        """Log several steps read at once (a GPU's losses are read every few steps, not every
        step): each gets their mean images/s since the last rows logged."""
        now = time.perf_counter()
        images = sum(row[3] for row in rows)
        rate = images / (now - self.last) if now > self.last else 0.0
        self.last = now
        for step, loss, lr, _, dev_acc in rows:
            self._write(step, loss, lr, rate, dev_acc)

    def _write(self, step: int, loss: float, lr: float | None, rate: float,
               dev_acc: float | None) -> None:
        if self.file is not None:
            self.csv.writerow([step, repr(loss), "" if lr is None else repr(lr), f"{rate:.3f}",
                               "" if dev_acc is None else repr(dev_acc)])
            self.file.flush()
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            if lr is not None:
                self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/images_per_s", rate, step)
            if dev_acc is not None:
                self.writer.add_scalar("dev/accuracy", dev_acc, step)

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` (a dev evaluation between steps) out of the next step's images/s."""
        self.last += seconds

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _rows_up_to(path: Path, start: int) -> list[list[str]]:
    """The rows of an earlier log of this run at steps <= `start` (a resumed run's checkpoint)."""
    if start == 0:
        return []
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))[1:]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    kept = []
    for row in rows:
        if len(row) == len(COLUMNS) - 1:  # a log written before dev_acc
            row = [*row, ""]
        try:
            if len(row) == len(COLUMNS) and int(row[0]) <= start:
                kept.append(row)
        except ValueError:
            continue
    return kept


def read_csv(path: Path) -> list[dict]:
    """A run's training log as dicts of numbers (empty lr or dev_acc, or a log without the
    dev_acc column: None)."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return [{"step": int(r["step"]), "loss": float(r["loss"]),
                 "lr": float(r["lr"]) if r["lr"] else None,
                 "images_per_s": float(r["images_per_s"]),
                 "dev_acc": float(r["dev_acc"]) if r.get("dev_acc") else None}
                for r in csv.DictReader(f)]
