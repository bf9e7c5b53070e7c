"""`mamf experiment FILE --launcher submitit`: one cluster job per unit of the grid.

A unit is what one training makes (a method, seed and sampler of one dataset; per task size for
methods that train per size), the same unit the in-process grid runs in turn. The launcher, on
the login node, builds the datasets, merges what earlier jobs wrote, and submits one job per
unit that still lacks rows (a rerun submits only those). Each job runs its unit exactly as the
in-process grid would (seeded per unit, from the pretrained weights) and appends its rows to its
own `jobs/<unit>/results.jsonl`: no two nodes ever write one file. The launcher merges those
files into `results.jsonl` in the grid's order once the jobs end, and again on every rerun, so
rows of jobs that finished after the launcher stopped are kept.

Submission goes through submitit (`pip install submitit`): Slurm where `sbatch` is found (or
`--submitit-cluster slurm`), its local executor otherwise (real subprocesses; tests, laptops).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mamf.results import Row, grid_key, read_rows
from mamf.system.errors import MamfError
from mamf.system.io import append_jsonl, atomic_write_bytes
from mamf.system.lock import exclusive

log = logging.getLogger(__name__)


@dataclass
class SlurmSettings:
    """What each job asks the cluster for (submitit's `slurm_*` parameters)."""

    partition: str | None = None
    time_min: int = 240
    cpus: int = 4
    gpus: int = 0
    mem_gb: int | None = None
    cluster: str | None = None  # None: submitit decides (slurm where sbatch exists, else local)


def merge_jobs(out: Path, order: list[str] = ()) -> int:
    """Append every job's rows not yet in `out/results.jsonl` (jobs in `order` first, then the
    others by name); returns how many were added. The caller holds the experiment's lock."""
    from mamf.runs.experiment import job_results
    from mamf.runs.measure import RESULTS

    results = out / RESULTS
    seen = {r.key for r in read_rows(results)}
    folders = sorted(p.name for p in (out / "jobs").glob("*") if p.is_dir()) \
        if (out / "jobs").is_dir() else []
    added = 0
    for job in [*order, *(f for f in folders if f not in order)]:
        for config in sorted(job_results(out, job).parent.glob("configs/*.yaml")):
            if not (out / "configs" / config.name).exists():  # the rows' settings, by hash
                atomic_write_bytes(out / "configs" / config.name, config.read_bytes())
        for row in read_rows(job_results(out, job)):
            if row.key not in seen:
                append_jsonl(results, row.to_json())
                seen.add(row.key)
                added += 1
    return added


def run_job(source: str, out: str, job: str) -> int:
    """One unit, in a job: its rows to its own file; returns how many it holds."""
    from mamf.runs.experiment import _run_experiment, job_results, load_experiment

    out_path = Path(out)
    folder = job_results(out_path, job).parent
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder):
        return len(_run_experiment(load_experiment(source), out_path, False, job=job))


def launch(exp, out: Path, slurm: SlurmSettings) -> list[Row]:
    """Submit the grid's missing units and wait for them; returns the merged rows."""
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
        rows = read_rows(out / RESULTS)
        atomic_write_bytes(out / "experiment.yaml", exp.source.read_bytes())
        done = {grid_key(r, bool(exp.shots)) for r in rows}
        units = [unit_id(p, u) for p in plan(exp, out, done)[0] for u in units_of(p)]
        if not units:
            log.info("nothing to do: every row of the grid is in %s", out / RESULTS)
            return rows
        executor = submitit.AutoExecutor(folder=str(out / "submitit"), cluster=slurm.cluster)
        params = {"timeout_min": slurm.time_min, "cpus_per_task": slurm.cpus,
                  "name": f"mamf-{exp.name}"}
        if slurm.gpus:
            params["gpus_per_node"] = slurm.gpus
        if slurm.mem_gb:
            params["mem_gb"] = slurm.mem_gb
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        executor.update_parameters(**params)
        jobs = executor.map_array(run_job, [str(exp.source)] * len(units),
                                  [str(out)] * len(units), units)
        log.info("submitted %d job(s) (%s): %s", len(jobs), executor.cluster,
                 ", ".join(str(j.job_id) for j in jobs[:5]) + (", ..." if len(jobs) > 5 else ""))
        failed = []
        for unit, job in zip(units, jobs):
            try:
                job.result()
            except Exception as e:  # a job's failure is recorded; the others' rows are kept
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
                failed.append(unit)
                log.error("job %s (%s) failed: %s", job.job_id, unit, first)
                append_jsonl(out / "failures.jsonl", {"job": str(job.job_id), "unit": unit,
                                                       "error": first})
        added = merge_jobs(out, units)
        log.info("%d row(s) merged from %d job(s)%s", added, len(jobs),
                 f"; {len(failed)} failed (rerun to submit them again)" if failed else "")
        return read_rows(out / RESULTS)
