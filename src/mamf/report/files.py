"""What the report reads beside the rows: the settings each row was measured with and its
training log, found relative to the results folder (a grid's jobs keep theirs under jobs/*/)."""

from __future__ import annotations

import functools
from pathlib import Path

from mamf.config import load_yaml
from mamf.engine.trainlog import CSV_NAME
from mamf.results import Row
from mamf.system.errors import MamfError


def _found(folder: Path, relative: str) -> Path | None:
    for base in [folder, *sorted((folder / "jobs").glob("*"))]:
        if (base / relative).is_file():
            return base / relative
    return None


def row_config(row: Row, folder: Path | None) -> dict | None:
    """The settings of a row as written beside it (configs/<config_id>.yaml, or the trained
    run's config.yaml), None when neither is there (`grid_config` rebuilds them from the
    grid's file)."""
    candidates = []
    if folder is not None and row.config_id:
        candidates.append(_found(folder, f"configs/{row.config_id}.yaml"))
    if row.run:
        candidates.append(Path(row.run) / "config.yaml")
    for path in candidates:
        if path is not None and path.is_file():
            try:
                return load_yaml(path)
            except MamfError:
                continue
    return None


def train_log_path(row: Row, folder: Path | None) -> Path | None:
    """A row's training log: its grid's train_logs/ file, or its trained run's train_log.csv."""
    if folder is not None and row.train_log:
        found = _found(folder, row.train_log)
        if found is not None:
            return found
    if row.run and (Path(row.run) / CSV_NAME).is_file():
        return Path(row.run) / CSV_NAME
    return None


def grid_config(row: Row, folder: Path | None) -> dict | None:
    """A grid row's settings rebuilt from the experiment.yaml beside it, for rows written before
    grids kept configs/; None without one. What tuning chose for the row (its `tuned_on_dev`)
    goes over the file's settings, as it did when the row ran. The data folder is not known
    then, so the settings' hash cannot be checked against the row's: the file is taken as the
    one that ran. Rebuilding settings takes the plug-ins' declarations, and so loads torch: the
    one part of a report that does, for rows of those older grids only."""
    from mamf.config import to_dict
    from mamf.runs.experiment_file import run_config
    from mamf.runs.tune_spec import nested

    if folder is None or not row.experiment_dataset or \
            not (Path(folder) / "experiment.yaml").is_file():
        return None
    try:
        exp = _experiment(str(Path(folder) / "experiment.yaml"))
        ds = next((d for d in exp.datasets if d.name == row.experiment_dataset), None)
        if ds is None:
            return None
        tuned = row.tuned_on_dev
        extra = nested(tuned["values"]) if isinstance(tuned, dict) and tuned.get("values") \
            else None
        return to_dict(run_config(exp, ds, row.method, row.seed, ds.root or ".",
                                  ways=row.ways, sampler=row.sampler,
                                  split=row.split, extra=extra))
    except (MamfError, KeyError, TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=8)
def _experiment(path: str):
    from mamf.runs.experiment_file import load_experiment

    return load_experiment(path, strict=False)  # a file that ran before a later rule still reads
