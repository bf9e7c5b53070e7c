"""What a task sampler costs per draw, beside uniform's, for pools of N training classes.

A sampler changes which classes meet, not the model's compute; this measures the rest: the
draw itself (and, for `confusion`, the update from a step's confusion table), against a
training step of tens of milliseconds or more. The confusion sampler has learnt from 500 steps
first, so its potentials are not all at the prior.

    python bench/samplers.py --classes 10,100,1122 --repeats 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import interleaved  # noqa: E402

from mamf.config import build_config  # noqa: E402
from mamf.data.dataset import Pool  # noqa: E402
from mamf.tasks import samplers  # noqa: E402


def made(name: str, n_classes: int, ways: int):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n_classes, 384))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pool = Pool(np.arange(n_classes), tuple(np.arange(1) for _ in range(n_classes)))
    sampler = samplers.create(name, pool, build_config({"train": {"sampler": name}}), lambda: emb)
    sampler.set_total_draws(10**6)
    for _ in range(500 if sampler.learns else 0):
        chosen = sampler.draw(rng, ways)
        probs = rng.dirichlet(np.ones(ways), size=ways)
        sampler.observe(chosen, np.hstack([probs * 2, np.full((ways, 1), 2.0)]))
    return sampler


def step(sampler, rng, ways):
    def run():
        chosen = sampler.draw(rng, ways)
        if sampler.learns:
            probs = rng.dirichlet(np.ones(ways), size=ways)
            sampler.observe(chosen, np.hstack([probs * 2, np.full((ways, 1), 2.0)]))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="10,100,1122")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print("| N classes | sampler | ms per draw | / uniform |")
    print("|---|---|---|---|")
    for n in (int(x) for x in args.classes.split(",")):
        rng = np.random.default_rng(1)
        fns = {name: step(made(name, n, args.ways), rng, args.ways) for name in samplers.names()}
        times = interleaved(fns, args.repeats)
        for name, seconds in times.items():
            print(f"| {n} | {name} | {seconds * 1000:.3f} | {seconds / times['uniform']:.1f} |")


if __name__ == "__main__":
    main()
