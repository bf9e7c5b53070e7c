"""What the report reads beside the rows: the settings each row was measured with and its
training log, found relative to the results folder (a grid's jobs keep theirs under jobs/*/)."""

from __future__ import annotations

from pathlib import Path

from mamf.config import load_yaml
from mamf.errors import MamfError
from mamf.trainlog import CSV_NAME


def _found(folder: Path, relative: str) -> Path | None:
    for base in [folder, *sorted((folder / "jobs").glob("*"))]:
        if (base / relative).is_file():
            return base / relative
    return None


def row_config(row: dict, folder: Path | None) -> dict | None:
    """The settings of a row as written beside it (configs/<config_id>.yaml, or the trained
    run's config.yaml), None when neither is there."""
    candidates = []
    if folder is not None and row.get("config_id"):
        candidates.append(_found(folder, f"configs/{row['config_id']}.yaml"))
    if row.get("run"):
        candidates.append(Path(row["run"]) / "config.yaml")
    for path in candidates:
        if path is not None and path.is_file():
            try:
                return load_yaml(path)
            except MamfError:
                continue
    return None


def train_log_path(row: dict, folder: Path | None) -> Path | None:
    """A row's training log: its grid's train_logs/ file, or its trained run's train_log.csv."""
    if folder is not None and row.get("train_log"):
        found = _found(folder, row["train_log"])
        if found is not None:
            return found
    if row.get("run") and (Path(row["run"]) / CSV_NAME).is_file():
        return Path(row["run"]) / CSV_NAME
    return None
