"""`mamf experiment FILE --launcher submitit`: one cluster job per unit of the grid.

A unit is what one training makes (a method, seed and sampler of one dataset; per task size for
methods that train per size), the same unit the in-process grid runs in turn. The launcher, on
the login node, builds the datasets, merges what earlier jobs wrote, and submits one job per
unit that still lacks rows (a rerun submits only those). Each job runs its unit exactly as the
in-process grid would (seeded per unit, from the pretrained weights) and appends its rows to its
own `jobs/<unit>/results.jsonl`, its failures to `jobs/<unit>/failures.jsonl`: no two nodes ever
write one file. The launcher merges those files into `results.jsonl` (in the grid's order) and
`failures.jsonl` as the jobs end, and again on every rerun, so rows of jobs that finished after
the launcher stopped are kept. The console names each failed unit's error.

Safe on one machine: submitit's local executor (no `sbatch`, or `--submitit-cluster local`) runs
at most `max_jobs` jobs at once (default: as many as the cores hold jobs of `cpus` CPUs and the
available memory holds jobs of `mem_gb`, ASSUMED_GB where unset); on Slurm `max_jobs` is the
array's parallelism. Ctrl-C cancels every job the launcher started, waits for them to stop and
says so. A rerun while jobs of an earlier launch still run is refused in one line (each running
job holds its folder's lock).

Pickles: submitit hands each job its call as a pickle (`DIR/submitit/*_submitted.pkl`, written by
this launcher, read by the job it starts) and writes the job's return value as another. The
launcher itself reads no pickle (rows and failures come from the jobs' JSONL files) and deletes
both once the job has ended; `DIR/submitit` keeps the jobs' logs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from mamf.results import Row, grid_key, read_rows
from mamf.system.errors import MamfError
from mamf.system.io import append_jsonl, atomic_write_bytes, atomic_write_text, read_jsonl
from mamf.system.lock import exclusive

log = logging.getLogger(__name__)

ASSUMED_GB = 2.0  # a job's memory where --slurm-mem-gb is unset (tiny models take 0.7-1.4 GB)
POLL_S = 0.5  # how often the launcher looks at its jobs
GRACE_S = 15.0  # how long a cancelled local job may take to stop before it is killed
FAILURES = "failures.jsonl"
JOB_INFO = "job.json"


@dataclass
class SlurmSettings:
    """What each job asks the cluster for (submitit's `slurm_*` parameters), and how many jobs
    run at once."""

    partition: str | None = None
    time_min: int = 240
    cpus: int = 4
    gpus: int = 0
    mem_gb: int | None = None
    cluster: str | None = None  # None: submitit decides (slurm where sbatch exists, else local)
    max_jobs: int | None = None  # None: local from cores and memory; Slurm unlimited

    def check(self) -> None:
        """One error line for a setting no job could run with."""
        for value, flag, least in ((self.time_min, "--slurm-time", 1),
                                   (self.cpus, "--slurm-cpus", 1), (self.gpus, "--slurm-gpus", 0),
                                   (self.mem_gb, "--slurm-mem-gb", 1),
                                   (self.max_jobs, "--max-jobs", 1)):
            if value is None and flag in ("--slurm-mem-gb", "--max-jobs"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise MamfError(f"{flag} must be a whole number of at least {least}, got {value!r}")


def default_max_jobs(slurm: SlurmSettings) -> int:
    """How many local jobs this machine holds: its cores over the jobs' CPUs, its available
    memory over their memory (`mem_gb`, else ASSUMED_GB); at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    by_cores = (cores or 1) // max(1, slurm.cpus)
    by_memory = int(_available_gb() // (slurm.mem_gb or ASSUMED_GB))
    return max(1, min(by_cores, by_memory))


def _available_gb() -> float:
    try:
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1)) / 2**20
    except (OSError, AttributeError):
        return float("inf")  # unknown: the cores decide


def merge_jobs(out: Path, order: list[str] = ()) -> int:
    """Append every job's rows not yet in `out/results.jsonl` (jobs in `order` first, then the
    others by name); returns how many were added. The caller holds the experiment's lock."""
    from mamf.runs.experiment import job_results
    from mamf.runs.measure import RESULTS

    results = out / RESULTS
    seen = {r.key for r in read_rows(results)}
    added = 0
    for job in [*order, *(f for f in _job_folders(out) if f not in order)]:
        for config in sorted(job_results(out, job).parent.glob("configs/*.yaml")):
            if not (out / "configs" / config.name).exists():  # the rows' settings, by hash
                atomic_write_bytes(out / "configs" / config.name, config.read_bytes())
        for row in read_rows(job_results(out, job)):
            if row.key not in seen:
                append_jsonl(results, row.to_json())
                seen.add(row.key)
                added += 1
    return added


def _job_folders(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "jobs").glob("*") if p.is_dir()) \
        if (out / "jobs").is_dir() else []


def merge_failures(out: Path, unit: str) -> list[dict]:
    """A job's failure records, moved into `out/failures.jsonl` (with the unit's name)."""
    path = out / "jobs" / unit / FAILURES
    if not path.is_file():
        return []
    records = [r for r in read_jsonl(path) if isinstance(r, dict)]
    for record in records:
        append_jsonl(out / FAILURES, {**record, "unit": unit})
    path.unlink()
    return records


def run_job(source: str, out: str, job: str) -> int:
    """One unit, in a job: its rows (and failures) to its own folder; returns how many rows it
    holds. An error that stops the job is recorded there too, then raised."""
    from mamf.runs.experiment import _run_experiment, job_results, load_experiment

    out_path = Path(out)
    folder = job_results(out_path, job).parent
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder):
        atomic_write_text(folder / JOB_INFO, json.dumps(
            {"pid": os.getpid(), "host": os.uname().nodename, "started": time.time()}))
        try:
            return len(_run_experiment(load_experiment(source), out_path, False, job=job))
        except BaseException as e:
            append_jsonl(folder / FAILURES, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "error": _one_line(e)})
            raise
        finally:
            info = json.loads((folder / JOB_INFO).read_text())
            atomic_write_text(folder / JOB_INFO, json.dumps({**info, "ended": time.time()}))


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(e, MamfError) else f"{type(e).__name__}: {first}".rstrip(": ")


def _running(out: Path, units: list[str]) -> list[str]:
    """The units whose job folder's lock is held: a job of an earlier launch still runs them."""
    busy = []
    for unit in units:
        if not (out / "jobs" / unit).is_dir():
            continue
        try:
            with exclusive(out / "jobs" / unit):
                pass
        except MamfError:
            busy.append(unit)
    return busy


def launch(exp, out: Path, slurm: SlurmSettings) -> list[Row]:
    """Submit the grid's missing units and wait for them; returns the merged rows."""
    slurm.check()
    try:
        import submitit
    except ImportError:
        raise MamfError("--launcher submitit needs submitit: pip install submitit") from None
    from mamf.runs.experiment import plan, unit_id, units_of
    from mamf.runs.measure import RESULTS

    if exp.source is None:
        raise MamfError("--launcher submitit needs the experiment as a file")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out):
        merge_jobs(out)
        for unit in _job_folders(out):  # failures a launcher that stopped did not report
            for record in merge_failures(out, unit):
                log.error("an earlier job of %s failed: %s", unit, record.get("error"))
        rows = read_rows(out / RESULTS)
        atomic_write_bytes(out / "experiment.yaml", exp.source.read_bytes())
        done = {grid_key(r, bool(exp.shots)) for r in rows}
        units = [unit_id(p, u) for p in plan(exp, out, done)[0] for u in units_of(p)]
        if not units:
            log.info("nothing to do: every row of the grid is in %s", out / RESULTS)
            return rows
        busy = _running(out, units)
        if busy:
            raise MamfError(f"{len(busy)} job(s) of an earlier launch still run in {out} ("
                            f"{busy[0]}{', ...' if len(busy) > 1 else ''}): wait for them or stop "
                            "them, then rerun")
        executor = submitit.AutoExecutor(folder=str(out / "submitit"), cluster=slurm.cluster)
        local = executor.cluster in ("local", "debug")
        params = {"timeout_min": slurm.time_min, "cpus_per_task": slurm.cpus,
                  "name": f"mamf-{exp.name}"}
        if slurm.gpus:
            params["gpus_per_node"] = slurm.gpus
        if slurm.mem_gb:
            params["mem_gb"] = slurm.mem_gb
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        limit = slurm.max_jobs or (default_max_jobs(slurm) if local else None)
        if not local and limit:
            params["slurm_array_parallelism"] = limit
        executor.update_parameters(**params)
        failed = _run_jobs(executor, exp, out, units, limit if local else None)
        added = merge_jobs(out, units)
        log.info("%d row(s) merged from %d job(s)%s", added, len(units),
                 f"; {len(failed)} failed (rerun to submit them again)" if failed else "")
        return read_rows(out / RESULTS)


def _run_jobs(executor, exp, out: Path, units: list[str], limit: int | None) -> list[str]:
    """Submit (at most `limit` running at once, where given) and wait; returns the failed
    units. Ctrl-C cancels every job started and waits for them to stop."""
    args = (str(exp.source), str(out))
    pending, running, failed = list(units), {}, []
    try:
        if limit is None:  # Slurm: one array, its parallelism set by the executor
            jobs = executor.map_array(run_job, *([a] * len(units) for a in args), units)
            running = dict(zip(units, jobs))
            pending = []
            log.info("submitted %d job(s) (%s): %s", len(jobs), executor.cluster,
                     ", ".join(str(j.job_id) for j in jobs[:5]) + (", ..." if len(jobs) > 5 else ""))
        else:
            log.info("running %d job(s) on this machine, at most %d at once (--max-jobs)",
                     len(units), limit)
        while pending or running:
            while pending and len(running) < (limit or len(pending)):
                unit = pending.pop(0)
                running[unit] = executor.submit(run_job, *args, unit)
                log.info("started %s (job %s)", unit, running[unit].job_id)
            for unit, job in list(running.items()):
                if job.done():
                    del running[unit]
                    if not _ended(out, unit, job):
                        failed.append(unit)
            if pending or running:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        jobs = list(running.values())
        _cancel(jobs)
        for unit, job in running.items():
            merge_failures(out, unit)
            _drop_pickles(job)
        merge_jobs(out, units)
        log.error("interrupted: cancelled %d running job(s)%s and started none of the %d "
                  "waiting; the rows finished are kept, a rerun submits the rest",
                  len(jobs), f" ({', '.join(str(j.job_id) for j in jobs)})" if jobs else "",
                  len(pending))
        raise
    return failed


def _ended(out: Path, unit: str, job) -> bool:
    """Report a job that ended: its failures, or why it gave no result; True if it finished
    cleanly."""
    records = merge_failures(out, unit)
    for record in records:
        log.error("%s (job %s) failed: %s", unit, job.job_id, record.get("error"))
    finished = job.paths.result_pickle.exists()  # written when the call returned or raised
    if not records and not finished:
        state = job.state
        error = f"the job ended without a result (state {state})"
        cause = _last_error(job.paths.stderr)
        error += f": {cause}" if cause else ""
        log.error("%s (job %s) failed: %s", unit, job.job_id, error)
        append_jsonl(out / FAILURES, {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "unit": unit,
                                      "job": str(job.job_id), "error": error})
    _drop_pickles(job)
    return finished and not records


def _last_error(path: Path) -> str:
    """The last line of a job's log that names an error (a traceback's last line, a kill)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if re.search(r"\w+(Error|Exception|Interrupt)\b|Killed|mamf: error:", line):
            return line.strip()[:300]
    return ""


def _drop_pickles(job) -> None:
    for path in (job.paths.submitted_pickle, job.paths.result_pickle):
        path.unlink(missing_ok=True)


def _cancel(jobs: list) -> None:
    """Cancel the jobs and, for local ones, wait until their processes are gone (a job that
    outlives GRACE_S is killed, its tasks first)."""
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + GRACE_S
    for job in jobs:
        process = getattr(job, "_process", None)  # submitit's local job: its controller
        if process is None:
            continue
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            for pid in [*_children(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()


def _children(pid: int) -> list[int]:
    """A process's children (Linux's /proc), those of the local job's controller."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
