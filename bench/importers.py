"""Reading a CLEVR scenes file one scene at a time against `json.load` of the whole file.

`python bench/importers.py --scenes 30000`: writes a synthetic `CLEVR_train_scenes.json` in the
published layout (3 to 10 objects with CLEVR's fields, relationships, directions), then reads it
each way in a fresh process and prints seconds and peak resident memory side by side. The real
training file holds 70,000 scenes.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_scenes(path: Path, n: int) -> None:
    rng = random.Random(0)
    scenes = []
    for i in range(n):
        k = rng.randint(3, 10)
        objects = [{"color": "red", "size": "large", "rotation": rng.random() * 360,
                    "shape": "cube", "material": "rubber",
                    "3d_coords": [rng.random(), rng.random(), rng.random()],
                    "pixel_coords": [rng.randint(0, 480), rng.randint(0, 320), rng.random() * 15]}
                   for _ in range(k)]
        relationships = {d: [[j for j in range(k) if j != o and rng.random() < 0.5]
                             for o in range(k)] for d in ("right", "behind", "front", "left")}
        scenes.append({"image_index": i, "objects": objects, "relationships": relationships,
                       "image_filename": f"CLEVR_train_{i:06d}.png", "split": "train",
                       "directions": {"right": [0.65, 0.14, 0.0], "behind": [-0.14, 0.65, 0.0]}})
    path.write_text(json.dumps({"info": {"split": "train"}, "scenes": scenes}))


def read(path: str, how: str) -> None:
    start = time.perf_counter()
    with open(path, "rb") as f:
        if how == "stream":
            from mamf.data.importers.clevr import read_scenes
            n = len(read_scenes(f, path))
        else:
            n = len([(s["image_filename"], len(s["objects"])) for s in json.load(f)["scenes"]])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"how": how, "scenes": n, "s": time.perf_counter() - start, "peak_mib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", type=int, default=30000)
    ap.add_argument("--read", nargs=2, metavar=("PATH", "HOW"), help=argparse.SUPPRESS)
    ap.add_argument("--write", metavar="PATH", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read:
        read(*args.read)
        return
    if args.write:
        write_scenes(Path(args.write), args.scenes)
        return
    with tempfile.TemporaryDirectory() as tmp:
        # Each step in its own process: a child inherits its parent's peak RSS across exec.
        path = Path(tmp) / "CLEVR_train_scenes.json"
        subprocess.run([sys.executable, __file__, "--write", str(path), "--scenes",
                        str(args.scenes)], check=True)
        size = path.stat().st_size / 2**20
        rows = {}
        for how in ("stream", "load"):
            out = subprocess.run([sys.executable, __file__, "--read", str(path), how],
                                 capture_output=True, text=True, check=True).stdout
            rows[how] = json.loads(out)
    print(f"{args.scenes} scenes, {size:.0f} MiB of JSON")
    print("| read | s | peak MiB |\n|---|---|---|")
    for how, r in rows.items():
        print(f"| {how} | {r['s']:.1f} | {r['peak_mib']:.0f} |")
    print(f"load/stream: time {rows['load']['s'] / rows['stream']['s']:.2f}x, "
          f"peak memory {rows['load']['peak_mib'] / rows['stream']['peak_mib']:.2f}x")


if __name__ == "__main__":
    main()
