"""Several mamf commands in one torchrun launch, so that two-rank tests share one start-up.

`python -m torch.distributed.run --nproc_per_node=2 tests/two_ranks.py CASES OUT`: CASES is a JSON
list of {"name", "args", "env"}. Each command runs as `python -m mamf` would, through `main`, which
sets its process group up and destroys it, so every case has a group of its own. Each rank writes
OUT/<name>.rank<r>.out and .err (the command's stdout and stderr) and OUT/<name>.rank<r>.json: its
exit code and the gloo threads alive before and after it (None off Linux). A failing case fails
its own test; the launch goes on to the next case.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from pathlib import Path


def gloo_threads() -> int | None:
    """How many of this process's threads are gloo's (named gloo_tcp_loop, pt_gloo_runloop)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    names = []
    for task in tasks.iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            names.append((task / "comm").read_text())
    return sum("gloo" in name for name in names)


def run(case: dict, out: Path, rank: str) -> None:
    from mamf.cli import main

    os.environ.update(case.get("env", {}))
    stem = out / f"{case['name']}.rank{rank}"
    saved = os.dup(1), os.dup(2)
    with open(f"{stem}.out", "w") as stdout, open(f"{stem}.err", "w") as stderr:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(stdout.fileno(), 1)  # file descriptors: what torch and gloo print comes too
        os.dup2(stderr.fileno(), 2)
        before = gloo_threads()
        try:
            code = main(case["args"])
        except SystemExit as e:
            code = e.code
        except BaseException:
            traceback.print_exc()
            code = "raised"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    record = {"returncode": code, "gloo_before": before, "gloo_after": gloo_threads()}
    Path(f"{stem}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    cases, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    for case in cases:
        run(case, out, os.environ["RANK"])
