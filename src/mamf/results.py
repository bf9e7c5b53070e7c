"""The results row: what one is, which rows are the same measurement, and reading them back.

A results row is one meta-test of one method at one task size: a JSON object on one line of
`results.jsonl`, written by `mamf evaluate` and `mamf experiment` (see `mamf.run.evaluate_prepared`
for every field). Everything that reads `results.jsonl` goes through `read_rows`, so a torn,
damaged or repeated line is skipped the same way everywhere and no row is ever counted twice.

    rows = read_rows(out / "results.jsonl")      # valid rows, one per row_key, in file order
    done = {row_key(r) for r in rows}            # what a rerun may skip
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import json
import logging
import platform
import subprocess
from pathlib import Path
from typing import NamedTuple

from mamf.errors import MamfError

log = logging.getLogger(__name__)

# fields a row must carry for mamf to read it, and their types (bool is not an int here)
_TEXT = ("method", "model", "dataset", "protocol", "split")
_COUNTS = {"ways": 2, "shots": 0, "queries": 0, "n_tasks": 1, "seed": None}  # name: least value
REQUIRED = (*_TEXT, *_COUNTS, "task_accs")


class RowKey(NamedTuple):
    """A measurement's identity, the fields of KEY_FIELDS by name (see there)."""

    dataset: str
    method: str
    model: str
    run: str | None
    protocol: str
    ways: int
    shots: int
    queries: int
    seed: int
    split: str
    sampler: str | None
    alpha: float | None


KEY_FIELDS = RowKey._fields
"""What `row_key` is made of. The dataset is the experiment's name for it where there is one
(`experiment_dataset`); `run` is the trained run folder an evaluation read (absent or None for
zero-shot and experiments); `sampler` the task sampler a method trained with (absent or None for
methods that draw no tasks); `alpha` the WiSE-FT mix of zero-shot and trained weights scored
(absent or None: the trained weights, no interpolation; rows before WiSE-FT). The settings hash
`config_id` is deliberately not part of the key:
an experiment keeps its finished rows when its file changes, so the same measurement may carry
another hash."""


ENVIRONMENT_FIELDS = ("mamf", "mamf_commit", "torch", "transformers", "peft", "onnxruntime",
                      "python", "device", "threads", "date")
"""What `environment` adds to every row: the software and machine a number was measured on, so
that two rows that differ can be told apart by more than their settings (on a CPU the thread
count changes the floating-point reductions, hence the last digits)."""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def _static_environment() -> dict:
    """The part of the environment that cannot change within one process (read once)."""
    import mamf

    return {"mamf": mamf.__version__, "mamf_commit": _git_commit(),
            "transformers": _version("transformers"), "peft": _version("peft"),
            "onnxruntime": _version("onnxruntime"), "python": platform.python_version()}


def _git_commit() -> str | None:
    """The commit of the source tree mamf was imported from (`+dirty` when it has changes), or
    None for an installed copy outside git."""
    import mamf

    where = Path(mamf.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                                "--untracked-files=no", "--", "."], capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def environment(device: str | None = None) -> dict:
    """The ENVIRONMENT_FIELDS of a row measured now on `device` (None: the CPU)."""
    import torch

    device = device or "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {**_static_environment(), "torch": torch.__version__, "device": device,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def dataset_name(row: dict) -> str:
    """The dataset a row belongs to: the experiment's name for it, else the data folder's."""
    return row.get("experiment_dataset") or row["dataset"]


def row_sampler(row: dict) -> str | None:
    """A row's task sampler; rows written before samplers existed were drawn uniformly (by a
    method that draws tasks) or by none."""
    if "sampler" in row:
        return row["sampler"]
    from mamf import methods, samplers

    known = row["method"] in methods.REGISTRY
    drawn = known and methods.method_class(row["method"]).draws_tasks
    return samplers.Uniform.name if drawn else None  # as `mamf.tasks.sample_classes` drew


def row_key(row: dict) -> RowKey:
    """Identity of the measurement a (valid) row holds: two rows with equal keys are the same
    measurement, so only the first may be counted."""
    return RowKey(dataset_name(row), row["method"], row["model"], row.get("run"), row["protocol"],
                  row["ways"], row["shots"], row["queries"], row["seed"], row["split"],
                  row_sampler(row), row_alpha(row))


def cell_key(row: dict) -> RowKey:
    """The cell a row measures: `row_key` without `queries`, which follows from the data (a split
    file, the images per class). Two rows of one cell with other query counts measured one seed
    twice on different test sets; `evaluate` refuses the second."""
    return row_key(row)._replace(queries=None)


def grid_key(row: dict, by_shots: bool = False) -> tuple:
    """The cell of an experiment grid a row fills (the grid fixes model, protocol and run):
    (dataset, method, sampler, ways, seed, split, alpha, shots); shots only where `by_shots` (the
    grid has a shots axis), else None."""
    k = row_key(row)
    return (k.dataset, k.method, k.sampler, k.ways, k.seed, k.split, k.alpha,
            k.shots if by_shots else None)


def row_alpha(row: dict) -> float | None:
    """The WiSE-FT alpha a row was scored at; None (or absent, in older rows): no mix."""
    alpha = row.get("alpha")
    return None if alpha is None else float(alpha)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def row_problem(obj: object) -> str | None:
    """Why `obj` is not a results row mamf can use, or None when it is one."""
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        return f"no {', '.join(missing)}"
    for k in _TEXT:
        if not isinstance(obj[k], str) or not obj[k]:
            return f"{k} is not a non-empty string"
    for k, least in _COUNTS.items():
        if not _is_int(obj[k]) or (least is not None and obj[k] < least):
            return f"{k} is not an integer" + (f" >= {least}" if least is not None else "")
    alpha = obj.get("alpha")
    if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool)
                                  and 0 <= alpha <= 1):
        return "alpha is not null or a number in [0, 1]"
    for k in ("experiment_dataset", "run"):
        if obj.get(k) is not None and (not isinstance(obj[k], str) or not obj[k]):
            return f"{k} is not a non-empty string"
    accs = obj["task_accs"]
    if not isinstance(accs, list) or not accs:
        return "task_accs is not a non-empty list"
    if not all((_is_int(a) or isinstance(a, float)) and 0 <= a <= 1 for a in accs):  # no NaN
        return "task_accs holds something other than accuracies in [0, 1]"
    if len(accs) != obj["n_tasks"]:
        return f"n_tasks is {obj['n_tasks']} but task_accs holds {len(accs)}"
    return None


def valid_row(obj: object) -> bool:
    """Whether `obj` is a results row mamf can use (see `row_problem` for why not)."""
    return row_problem(obj) is None


def read_rows(path: str | Path) -> list[dict]:
    """The valid rows of a results.jsonl, in file order, at most one per `row_key` (the first).

    Lines that are torn (a kill mid-write), not UTF-8, not JSON or not a valid row are skipped
    with one counted warning; rows repeating an earlier row's key with another. A missing file
    has no rows. Never raises on the file's content.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise MamfError(f"cannot read {path}: {e.strerror or e}") from None
    rows: list[dict] = []
    seen: set[tuple] = set()
    bad: list[str] = []
    repeated: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad.append(f"line {number}: not UTF-8")
            continue
        except (ValueError, RecursionError):  # JSONDecodeError, or an integer too long to read
            bad.append(f"line {number}: not JSON (torn or damaged)")
            continue
        problem = row_problem(obj)
        if problem:
            bad.append(f"line {number}: {problem}")
            continue
        key = row_key(obj)
        if key in seen:
            repeated.append(number)
            continue
        seen.add(key)
        rows.append(obj)
    if bad:
        log.warning("skipped %d line(s) of %s that are not results rows (%s%s)", len(bad), path,
                    "; ".join(bad[:3]), "; ..." if len(bad) > 3 else "")
    if repeated:
        log.warning("skipped %d row(s) of %s that repeat an earlier row (same %s; line(s) %s%s): "
                    "each measurement is counted once", len(repeated), path,
                    ", ".join(KEY_FIELDS), ", ".join(map(str, repeated[:5])),
                    ", ..." if len(repeated) > 5 else "")
    return rows
