"""A generated counting dataset in the spirit of CLEVR counting: scenes with 1..10 objects.

Each image shows `n` non-overlapping objects (circles, squares, triangles, stars, hexagons,
diamonds) of varied colours and sizes on a plain, gradient or blotchy-noise background; the class is
`n`. Every image is drawn from its own `random.Random` seeded by (seed, n, index), using only
`random()` (whose sequence Python guarantees across versions), so the same seed gives byte-identical
files with the same Pillow/zlib, and raising `per_class` keeps the earlier images unchanged.
"""

from __future__ import annotations

import colorsys
import math
import os
import random
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from PIL import Image, ImageDraw

from mamf.data.builders.common import MAX_PER_CLASS, MAX_SIZE, BuiltDataset, Log, build_with, check_int

NAME = "counting"
VERSION = 1
WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
SUPERSAMPLE = 3


def label_folder(n: int) -> str:
    """'01_one' ... '10_ten': readable and sorted numerically by name."""
    return f"{n:02d}_{WORDS[n - 1]}"


def prompt(n: int) -> str:
    """The paper's template "An image of {x} objects.", made singular for one."""
    return "An image of one object." if n == 1 else f"An image of {WORDS[n - 1]} objects."


class _Rng:
    """Draws built only on `random.Random.random()`, which is stable across Python versions."""

    def __init__(self, key: str):
        self._r = random.Random(key)

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self._r.random()

    def below(self, n: int) -> int:
        return min(int(self._r.random() * n), n - 1)

    def choice(self, seq):
        return seq[self.below(len(seq))]


def _hls(h: float, lum: float, s: float) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in colorsys.hls_to_rgb(h % 1.0, lum, s))


def _background(rng: _Rng, size: int, dark: bool) -> Image.Image:
    def colour():
        lum = rng.uniform(0.08, 0.3) if dark else rng.uniform(0.72, 0.95)
        return _hls(rng.uniform(0, 1), lum, rng.uniform(0.0, 0.6))

    kind = rng.choice(("plain", "gradient", "noise"))
    if kind == "plain":
        return Image.new("RGB", (size, size), colour())
    if kind == "gradient":
        a, b = colour(), colour()
        angle = rng.uniform(0, 2 * math.pi)
        dx, dy = math.cos(angle), math.sin(angle)
        # A 2x2 corner image stretched bilinearly is a linear gradient along (dx, dy).
        corners = Image.new("RGB", (2, 2))
        for (x, y) in ((0, 0), (1, 0), (0, 1), (1, 1)):
            t = ((x - 0.5) * dx + (y - 0.5) * dy) / (abs(dx) + abs(dy)) + 0.5
            corners.putpixel((x, y), tuple(int(round(p + (q - p) * t)) for p, q in zip(a, b)))
        return corners.resize((size, size), Image.Resampling.BILINEAR)
    base = colour()
    side = 4 + rng.below(9)  # a coarse grid of noise, scaled up
    noise = Image.new("RGB", (side, side))
    for y in range(side):
        for x in range(side):
            shade = rng.uniform(-30, 30)  # mostly lightness noise, a little colour noise
            noise.putpixel((x, y), tuple(max(0, min(255, int(c + shade + rng.uniform(-12, 12))))
                                         for c in base))
    return noise.resize((size, size), Image.Resampling.BICUBIC)


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, radii = 4, [r * 0.92]
    elif shape == "triangle":
        k, radii = 3, [r]
    elif shape == "hexagon":
        k, radii = 6, [r]
    elif shape == "diamond":
        return [(cx, cy - r), (cx + 0.65 * r, cy), (cx, cy + r), (cx - 0.65 * r, cy)]
    else:  # star
        k, radii = 10, [r, r * 0.45]
    return [(cx + radii[i % len(radii)] * math.cos(rot + 2 * math.pi * i / k),
             cy + radii[i % len(radii)] * math.sin(rot + 2 * math.pi * i / k)) for i in range(k)]


def _place(rng: _Rng, n: int, size: int) -> list[tuple[float, float, float]]:
    """n non-overlapping discs (cx, cy, r) inside the canvas; shrinks radii until they fit."""
    r_max = size * (0.17 if n <= 2 else 0.14 if n <= 4 else 0.11 if n <= 7 else 0.095)
    scale = 1.0
    while True:
        radii = sorted((scale * rng.uniform(0.55, 1.0) * r_max for _ in range(n)), reverse=True)
        placed: list[tuple[float, float, float]] = []
        for r in radii:
            margin = r + 0.04 * size
            for _ in range(300):
                cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
                if all(math.hypot(cx - x, cy - y) > r + q + 0.03 * size for x, y, q in placed):
                    placed.append((cx, cy, r))
                    break
            else:
                break
        if len(placed) == n:
            return placed
        scale *= 0.85


def draw_scene(n: int, size: int, rng: _Rng) -> Image.Image:
    """One RGB image with `n` objects."""
    dark = rng.uniform(0, 1) < 0.4
    big = size * SUPERSAMPLE
    img = _background(rng, big, dark)
    draw = ImageDraw.Draw(img)
    kinds = [rng.choice(SHAPES) for _ in range(1 + rng.below(3))]
    palette_hue = rng.uniform(0, 1)
    one_colour = rng.uniform(0, 1) < 0.3
    for cx, cy, r in _place(rng, n, big):
        shape = rng.choice(kinds)
        hue = palette_hue if one_colour else rng.uniform(0, 1)
        lum = rng.uniform(0.55, 0.75) if dark else rng.uniform(0.25, 0.5)
        fill = _hls(hue, lum, rng.uniform(0.55, 1.0))
        outline = _hls(hue, 0.92 if dark else 0.12, 0.3) if rng.uniform(0, 1) < 0.35 else None
        width = max(1, int(round(r * 0.12)))
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=outline, width=width)
        else:
            pts = _polygon(shape, cx, cy, r, rng.uniform(0, 2 * math.pi))
            draw.polygon(pts, fill=fill, outline=outline, width=width if outline else 1)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _draw_class(job: tuple[str, int, int, int, int]) -> None:
    """Every scene of one count into its folder (a worker process's share of the build)."""
    folder, n, per_class, size, seed = job
    for i in range(per_class):
        img = draw_scene(n, size, _Rng(f"mamf-counting/{seed}/{n}/{i}"))
        img.save(Path(folder) / f"{i:04d}.png", compress_level=1)  # lossless at any level


def build_counting(out: str | os.PathLike, *, log: Log = print, per_class: int = 60,
                   size: int = 128, seed: int = 0) -> Path:
    """Generate `per_class` scenes for each count 1..10 into `out`; returns the dataset root.

    Classes are the folders `01_one` ... `10_ten`; prompts are "An image of one object." and
    "An image of {two..ten} objects.". Same `seed` (and Pillow/zlib) -> byte-identical files.
    """
    check_int(NAME, "per_class", per_class, maximum=MAX_PER_CLASS)
    check_int(NAME, "size", size, minimum=16, maximum=MAX_SIZE)
    check_int(NAME, "seed", seed, minimum=-(2**63))
    options = {"per_class": per_class, "size": size, "seed": seed}

    def make(tmp: Path) -> BuiltDataset:
        workers = min(10, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
        log(f"{NAME}: drawing {10 * per_class} scenes of {size}x{size} (seed {seed}"
            f"{f', {workers} processes' if workers > 1 else ''})")
        jobs = []
        for n in range(1, 11):
            (tmp / label_folder(n)).mkdir()
            jobs.append((str(tmp / label_folder(n)), n, per_class, size, seed))
        if workers > 1:  # every image has its own generator: the same bytes in any process
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                list(pool.map(_draw_class, jobs))
        else:
            for job in jobs:
                _draw_class(job)
        return BuiltDataset(
            title="Counting: generated scenes with 1 to 10 objects",
            label_to_text={label_folder(n): prompt(n) for n in range(1, 11)},
            source="Generated by `mamf.data.builders.counting` (no external data), in the spirit of "
                   "the CLEVR counting task.",
            licence="Generated data; no third-party content. Use freely (same licence as mamf, "
                    "Apache-2.0).",
            method=f"For each count n in 1..10 and index i, a scene of {size}x{size} pixels is drawn "
                   f"with PIL.ImageDraw at {SUPERSAMPLE}x resolution and downsampled (Lanczos): a "
                   "plain, linear-gradient or blotchy-noise background, then n non-overlapping "
                   "objects of 1 to 3 shape kinds (circle, square, triangle, star, hexagon, "
                   "diamond), with random colours (light on dark or dark on light), sizes, "
                   "rotations and optional outlines. Each image has its own random generator "
                   f"seeded by `mamf-counting/{{seed}}/{{n}}/{{i}}` (seed={seed}), so images do "
                   "not depend on `per_class`.",
            notes="Prompts follow the template \"An image of {x} objects.\" with x the number word; "
                  "for n = 1 the grammatical \"An image of one object.\" is used.",
        )

    return build_with(NAME, out, options, log, make, version=VERSION)
