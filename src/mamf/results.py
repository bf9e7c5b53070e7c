"""The results row: what one is, which rows are the same measurement, and reading them back.

A results row is one meta-test of one method at one task size: a JSON object on one line of
`results.jsonl`, written by `mamf evaluate` and `mamf experiment` (see `mamf.runs.measure.evaluate_prepared`
for every field), and in Python a `Row`, whose `key` (a `RowKey`) says which measurement it is.
Everything that reads `results.jsonl` goes through `read_rows`, so a torn, damaged or repeated
line is skipped the same way everywhere and no row is ever counted twice.

    rows = read_rows(out / "results.jsonl")   # valid Rows, one per key, in file order
    done = {r.key for r in rows}              # what a rerun may skip
    rows[0].acc_mean, rows[0].dataset_name    # read by attribute, never by string key
    Row.from_json(obj).to_json() == obj       # a row read and written back is unchanged
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import logging
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mamf.system import denormals
from mamf.system.errors import MamfError, is_int

log = logging.getLogger(__name__)

# fields a row must carry for mamf to read it, and their types (bool is not an int here)
_TEXT = ("method", "model", "dataset", "protocol", "split")
_COUNTS = {"ways": 2, "shots": 0, "queries": 0, "n_tasks": 1, "seed": None}  # name: least value
REQUIRED = (*_TEXT, *_COUNTS, "task_accs")


class RowKey(NamedTuple):
    """A measurement's identity, the fields of KEY_FIELDS by name (see there); `Row.key` makes
    it, and every coarser grouping (a grid's row, the report's comparison cell, a row without
    its WiSE-FT alpha) is this key with some fields blank (`without`), never a tuple of its own."""

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

    def without(self, *fields: str) -> RowKey:
        """This key with `fields` blank (None): the identity that does not tell rows apart by
        them."""
        unknown = [f for f in fields if f not in self._fields]
        if unknown:
            raise ValueError(f"not fields of a row's key: {', '.join(unknown)}")
        return self._replace(**dict.fromkeys(fields))

    @classmethod
    def partial(cls, **fields) -> RowKey:
        """A key of `fields` alone, the others blank: what is known of a row before it is
        measured (an experiment's plan)."""
        return cls(**{**dict.fromkeys(cls._fields), **fields})


KEY_FIELDS = RowKey._fields
"""What `row_key` is made of. The dataset is the experiment's name for it where there is one
(`experiment_dataset`); `run` is the trained run folder an evaluation read (absent or None for
zero-shot and experiments); `sampler` the task sampler a method trained with (absent or None for
methods that draw no tasks); `alpha` the WiSE-FT mix of zero-shot and trained weights scored
(absent or None: the trained weights, no interpolation; rows before WiSE-FT). The settings hash
`config_id` is deliberately not part of the key:
an experiment keeps its finished rows when its file changes, so the same measurement may carry
another hash."""

GRID_LEAVES_OUT = ("model", "run", "protocol", "queries")
"""What an experiment's grid does not tell its rows apart by (`grid_key`): the grid fixes the
model, protocol and run, and the query count follows from the data."""

ENVIRONMENT_FIELDS = ("mamf", "mamf_commit", "torch", "transformers", "peft", "onnxruntime",
                      "python", "device", "tf32", "threads", "denormals", "date")
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


def this_code() -> tuple[str, str | None]:
    """(mamf's version, the commit of its source tree or None): what a row measured now records
    as `mamf` and `mamf_commit`."""
    found = _static_environment()
    return found["mamf"], found["mamf_commit"]


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
    """The ENVIRONMENT_FIELDS of a row measured now on `device` (None: the CPU); `tf32`: whether
    fp32 matmuls ran in TF32 (`train.tf32`; None off CUDA)."""
    import torch

    device = device or "cpu"
    tf32 = bool(torch.backends.cuda.matmul.allow_tf32) if device.startswith("cuda") else None
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {**_static_environment(), "torch": torch.__version__, "device": device, "tf32": tf32,
            "threads": torch.get_num_threads(), "denormals": denormals.mode(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


@dataclass(kw_only=True)
class Row:
    """One results row: its identity (what `key` is made of), what every row measured, and the
    rest of its JSON fields in `extra`, so that nothing is lost when a row is read and written.

    `order` is the row's JSON fields as read (`from_json`) or as made, in order: `to_json`
    writes exactly those, so a row read back is written as it was (older rows lack `sampler` and
    `alpha`, `evaluate`'s rows name their `run`, an experiment's do not). Change fields with
    `update`, which adds a new one at the end as a dict would.
    """

    # identity (`key`)
    method: str
    model: str
    dataset: str  # the data folder's name; `experiment_dataset` is the experiment's for it
    protocol: str
    ways: int
    shots: int
    queries: int
    seed: int
    split: str
    sampler: str | None = None  # from a row without one: what `row_sampler` says
    alpha: float | None = None
    run: str | None = None
    experiment_dataset: str | None = None
    # what was measured (nothing yet in a row looked up before it is measured, `run.row_head`)
    n_tasks: int = 0
    task_accs: list[float] = field(default_factory=list)
    acc_mean: float | None = None
    acc_ci95: float | None = None
    task_similarity: list[float | None] | None = None
    time_s: float | None = None
    config_id: str | None = None
    templates: str | None = None
    split_file_sha256: str | None = None
    trainable_params: int | None = None
    train_steps: int | None = None
    train_images: int | None = None
    train_budget: str | None = None
    train_time_s: float | None = None
    train_log: str | None = None  # a grid's training log, relative to the results folder
    tuned_on_dev: dict | None = None  # what `mamf tune` chose, where it chose
    prompts: str | None = None  # what gave the prompts: template, templates, label_to_text.json, coop
    template: str | None = None  # with prompts `coop`: CoOp's template for the dataset
    coop_dataset: str | None = None  # the CoOp DATASETS.md folder the row's data came from
    hypotheses_sha256: str | None = None  # the experiment file's declared hypotheses, hashed
    train_at_chance: bool | None = None  # its training's loss ended at chance
    train_collapsed: bool | None = None  # ... after beginning below it
    class_names: list[str] | None = None  # with `metatest.save_predictions`
    predictions: list | None = None  # per test task, `results.decode_predictions` reads it
    experiment: str | None = None
    host: str | None = None
    extra: dict = field(default_factory=dict)  # every other field (environment, protocol's own)
    order: tuple[str, ...] = ()

    @property
    def key(self) -> RowKey:
        """Identity of the measurement: two rows with equal keys are the same measurement, so
        only the first may be counted (`read_rows`). The one definition of a row's key."""
        fields = {f: getattr(self, f) for f in KEY_FIELDS}
        fields["dataset"] = self.experiment_dataset or self.dataset
        fields["alpha"] = row_alpha(self)
        return RowKey(**fields)

    @property
    def dataset_name(self) -> str:
        """The dataset the row belongs to: the experiment's name for it, else the data
        folder's (what `key.dataset` holds)."""
        return self.experiment_dataset or self.dataset

    @property
    def trained(self) -> bool:
        """Whether something was trained for this row: it records training steps, or names the
        trained run it scored."""
        return self.train_steps is not None or bool(self.run)

    def own(self, name: str):
        """A field the row's protocol adds (`Protocol.row_fields`), or None where absent."""
        return self.extra.get(name)

    @property
    def environment(self) -> dict:
        """The ENVIRONMENT_FIELDS the row holds (rows before some of them lack them)."""
        return {f: self.extra[f] for f in ENVIRONMENT_FIELDS if f in self.extra}

    @classmethod
    def from_json(cls, obj: dict) -> Row:
        """The row a JSON object holds, its fields in their order; a row from before samplers
        names the sampler `row_sampler` says it was drawn with. Only the key's fields are
        required here: whether a row is one mamf can count is `row_problem`'s to say."""
        missing = [k for k in _NEEDED if k not in obj]
        if missing:
            raise MamfError(f"not a results row: no {', '.join(missing)}")
        named = {k: v for k, v in obj.items() if k in _NAMED}
        if "sampler" not in obj:
            named["sampler"] = row_sampler(obj)
        return cls(**named, extra={k: v for k, v in obj.items() if k not in _NAMED},
                   order=tuple(obj))

    def to_json(self) -> dict:
        """The JSON object of the row: the fields of `order`, in that order."""
        return {k: getattr(self, k) if k in _NAMED else self.extra[k] for k in self.order}

    def update(self, fields: dict) -> None:
        """Set `fields`, as `dict.update` would: new ones are written last."""
        for k, v in fields.items():
            if k in _NAMED:
                setattr(self, k, v)
            else:
                self.extra[k] = v
        self.order += tuple(k for k in fields if k not in self.order)


_NAMED = frozenset(f.name for f in dataclasses.fields(Row)) - {"extra", "order"}
# what `from_json` needs: the fields of the key every row has had since the first
_NEEDED = [f.name for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING]


DREW_TASKS_BEFORE_SAMPLERS = ("mamf", "fomaml")


def row_sampler(row: dict) -> str | None:
    """A row's task sampler; rows written before samplers existed were drawn uniformly (by a
    method that draws tasks) or by none."""
    if "sampler" in row:
        return row["sampler"]
    # before samplers existed, the methods that drew tasks were these two, and drew uniformly;
    # every method since writes its sampler (a fact of history, not a registry's to answer)
    return "uniform" if row["method"] in DREW_TASKS_BEFORE_SAMPLERS else None


def row_key(row: dict | Row) -> RowKey:
    """`Row.key` of a row as JSON (or of a Row)."""
    return (row if isinstance(row, Row) else Row.from_json(row)).key


def measured_key(row: dict | Row) -> RowKey:
    """What a row measured: `row_key` without `queries`, which follows from the data (a split
    file, the images per class). Two rows of one `measured_key` with other query counts measured
    one seed twice on different test sets; `evaluate` refuses the second."""
    return row_key(row).without("queries")


def grid_key(row: dict | Row, by_shots: bool = False) -> RowKey:
    """The place in an experiment grid a row fills: `row_key` without GRID_LEAVES_OUT, and
    without shots unless `by_shots` (the grid has a shots axis)."""
    return row_key(row).without(*GRID_LEAVES_OUT, *(() if by_shots else ("shots",)))


def row_alpha(row: dict | Row) -> float | None:
    """The WiSE-FT alpha a row was scored at; None (or absent, in older rows): no mix."""
    alpha = row.alpha if isinstance(row, Row) else row.get("alpha")
    return None if alpha is None else float(alpha)


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
        if not is_int(obj[k]) or (least is not None and obj[k] < least):
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
    if not all((is_int(a) or isinstance(a, float)) and 0 <= a <= 1 for a in accs):  # no NaN
        return "task_accs holds something other than accuracies in [0, 1]"
    if len(accs) != obj["n_tasks"]:
        return f"n_tasks is {obj['n_tasks']} but task_accs holds {len(accs)}"
    return None


def read_rows(path: str | Path) -> list[Row]:
    """The valid rows of a results.jsonl as `Row`s, in file order, at most one per key (the
    first); `Row.to_json` gives each back field for field as it was written.

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
    rows: list[Row] = []
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
        row = Row.from_json(obj)
        if row.key in seen:
            repeated.append(number)
            continue
        seen.add(row.key)
        rows.append(row)
    if bad:
        log.warning("skipped %d line(s) of %s that are not results rows (%s%s)", len(bad), path,
                    "; ".join(bad[:3]), "; ..." if len(bad) > 3 else "")
    if repeated:
        log.warning("skipped %d row(s) of %s that repeat an earlier row (same %s; line(s) %s%s): "
                    "each measurement is counted once", len(repeated), path,
                    ", ".join(KEY_FIELDS), ", ".join(map(str, repeated[:5])),
                    ", ..." if len(repeated) > 5 else "")
    return rows


# a row's `predictions` (metatest.save_predictions): written by the meta-test, read by the report
PREDICTION_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def encode_predictions(task, predicted: np.ndarray) -> list:
    """One task's predictions, compactly: [its classes (global ids), the query images' true
    classes, the classes they were given], the last two as task-local indices, one character
    each ("0"-"9", "a"-"z", "A"-"Z") for tasks of up to 62 classes, else lists of integers."""
    def code(labels) -> str | list[int]:
        labels = [int(x) for x in labels]
        fits = task.ways <= len(PREDICTION_DIGITS)
        return "".join(PREDICTION_DIGITS[x] for x in labels) if fits else labels

    return [[int(c) for c in task.classes], code(task.query_labels), code(predicted)]


def decode_predictions(record: list) -> tuple[np.ndarray, np.ndarray]:
    """(true, given) global class ids of one task's query images (`encode_predictions`)."""
    classes, truth, given = record
    classes = np.asarray(classes, dtype=np.int64)

    def local(labels) -> np.ndarray:
        return np.array([PREDICTION_DIGITS.index(c) for c in labels] if isinstance(labels, str)
                        else labels, dtype=np.int64)

    return classes[local(truth)], classes[local(given)]
