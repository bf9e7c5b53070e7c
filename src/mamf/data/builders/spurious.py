"""A spurious-correlation benchmark: the label is a shape, the background colour is a shortcut.

Ten classes, one a shape (circle, square, ...; the prompt "An image of a {shape}." names it). Each
class owns one background colour. In the training images a class's own colour is used with
probability `rho` (exactly round(rho * N_train) of the N_train training images overall, spread over
the classes as evenly as possible); the rest get the other nine colours in turn. In the dev and
test images the colour is independent of the class (each colour equally often in every class), or,
with `shift="reversed"`, always the colour of the next class. So colour pays in training as much
as rho says and stops paying (or misleads) at test: where a model that can read colour lets it
replace shape, its test accuracy falls as rho grows.

The splits are the paper protocol's (each class's images in file-name order: first 60 % train,
20 % dev, 20 % test; `mamf.data.splits.per_class_split`): file `0007_train_red.png` is image 7
of its class, in the training part, on a red background. Under the episodic protocol (classes split
disjointly) the correlation has no meaning; use `data.protocol: paper`.
Images are drawn as in the counting builder (own seeded generator per image), so the same seed
gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw

from mamf.data.builders.common import MAX_PER_CLASS, MAX_SIZE, BuiltDataset, Log, build_with, check_int
from mamf.data.builders.counting import SUPERSAMPLE, _hls, _polygon, _Rng
from mamf.data.splits import per_class_split
from mamf.system.errors import MamfError, shown

NAME = "spurious"
VERSION = 1
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "pentagon", "cross",
          "heart", "crescent")
# one background colour a class, far apart in RGB so that a pixel's nearest one is never in doubt
COLOURS = {"red": (200, 40, 40), "orange": (235, 135, 30), "yellow": (230, 215, 50),
           "green": (50, 160, 60), "cyan": (40, 190, 210), "blue": (40, 70, 200),
           "purple": (130, 50, 180), "pink": (240, 130, 200), "brown": (120, 75, 40),
           "grey": (128, 128, 128)}
COLOUR_NAMES = tuple(COLOURS)
SHIFTS = ("independent", "reversed")
JITTER = 12  # per-channel background jitter; nearest palette colour stays the drawn one


def label_folder(k: int) -> str:
    return f"{k:02d}_{SHAPES[k]}"


def prompt(shape: str) -> str:
    return f"An image of a {shape}."


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float) -> Image.Image:
    """An L mask (255 inside) of one shape centred at (cx, cy) with radius about r."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "pentagon":
        draw.polygon([(cx + r * math.cos(rot + 2 * math.pi * i / 5),
                       cy + r * math.sin(rot + 2 * math.pi * i / 5)) for i in range(5)], fill=255)
    elif shape == "cross":
        w = 0.34 * r  # half the bar width
        arm = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
               (-r, w), (-r, -w), (-w, -w)]
        c, s = math.cos(rot), math.sin(rot)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in arm], fill=255)
    elif shape == "heart":  # the classic parametric heart, upright
        pts = []
        for i in range(96):
            t = 2 * math.pi * i / 96
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 17, cy - r * (y + 2) / 17))
        draw.polygon(pts, fill=255)
    elif shape == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy = 0.45 * r * math.cos(rot), 0.45 * r * math.sin(rot)
        q = 0.82 * r
        draw.ellipse((cx + ox - q, cy + oy - q, cx + ox + q, cy + oy + q), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, rot), fill=255)
    return mask


def draw_image(shape: str, colour: str, size: int, rng: _Rng) -> Image.Image:
    """One RGB image: a `shape` of random colour, size, place and turn on a `colour` background."""
    big = size * SUPERSAMPLE
    base = COLOURS[colour]
    bg = tuple(max(0, min(255, int(c + rng.uniform(-JITTER, JITTER)))) for c in base)
    img = Image.new("RGB", (big, big), bg)
    r = big * rng.uniform(0.22, 0.36)
    margin = r + 0.04 * big
    cx, cy = rng.uniform(margin, big - margin), rng.uniform(margin, big - margin)
    dark = rng.uniform(0, 1) < 0.5  # near-black or near-white objects: colour never tells shape
    fill = _hls(rng.uniform(0, 1), rng.uniform(0.08, 0.2) if dark else rng.uniform(0.85, 0.96),
                rng.uniform(0.0, 0.5))
    img.paste(fill, (0, 0, big, big), _shape_mask(shape, big, cx, cy, r, rng.uniform(0, 2 * math.pi)))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def _spread(total: int, parts: int, rng: _Rng) -> list[int]:
    """`total` split over `parts` as evenly as possible; which parts get one more is seeded."""
    base, extra = divmod(total, parts)
    order = _shuffled(list(range(parts)), rng)
    plus = set(order[:extra])
    return [base + (k in plus) for k in range(parts)]


def _shuffled(items: list, rng: _Rng) -> list:
    """Fisher-Yates on `_Rng` (stable across Python versions, unlike `random.shuffle`)."""
    items = list(items)
    for i in range(len(items) - 1, 0, -1):
        j = rng.below(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


def assign_colours(per_class: int, rho: float, shift: str, seed: int) -> list[list[tuple[str, int]]]:
    """Per class, per image (in file order): (split, colour index). The whole design, no pixels."""
    n = len(SHAPES)
    splits = per_class_split(per_class)
    n_train = splits["train"].stop
    rng = _Rng(f"mamf-spurious/{seed}/design")
    agree = _spread(round(rho * n_train * n), n, rng)
    design = []
    for k in range(n):
        others = [c for c in range(n) if c != k]
        # training: agree[k] images on the class's colour, the rest cycle through the others
        train = [k] * agree[k] + [others[i % len(others)] for i in range(n_train - agree[k])]
        rows = [("train", c) for c in _shuffled(train, rng)]
        for split in ("dev", "test"):
            m = splits[split].stop - splits[split].start
            if shift == "reversed":
                colours = [(k + 1) % n] * m
            else:  # whole cycles of all colours, then a random few distinct ones: E[agree] = 1/n
                colours = [i % n for i in range(m - m % n)] + _shuffled(range(n), rng)[:m % n]
                colours = _shuffled(colours, rng)
            rows += [(split, c) for c in colours]
        design.append(rows)
    return design


def agreement(design: list[list[tuple[str, int]]]) -> dict[str, float]:
    """Per split, the fraction of images whose background is their own class's colour."""
    out = {}
    for split in ("train", "dev", "test"):
        hits = [c == k for k, rows in enumerate(design) for s, c in rows if s == split]
        out[split] = sum(hits) / len(hits)
    return out


def build_spurious(out: str | os.PathLike, *, log: Log = print, rho: float = 0.9,
                   shift: str = "independent", per_class: int = 100, size: int = 96,
                   seed: int = 0) -> Path:
    """Draw the shape/background-colour dataset into `out`; returns the dataset root.

    `rho`: fraction of training images on their class's own background colour (0.1 = chance for
    ten colours: no correlation). `shift`: dev/test colours `independent` of the class or
    `reversed` (always the next class's colour). The default per_class=100 gives 60/20/20 images
    a class, so rho * 600 is an integer for rho in steps of 1/600 and dev/test are exactly balanced.
    """
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
        raise MamfError(f"{NAME}: rho must be a number from 0 to 1, not {shown(rho)}")
    if shift not in SHIFTS:
        raise MamfError(f"{NAME}: shift must be one of {', '.join(SHIFTS)}, not {shown(shift)}")
    check_int(NAME, "per_class", per_class, minimum=5, maximum=MAX_PER_CLASS)
    check_int(NAME, "size", size, minimum=16, maximum=MAX_SIZE)
    check_int(NAME, "seed", seed, minimum=-(2**63))
    rho = float(rho)
    options = {"rho": rho, "shift": shift, "per_class": per_class, "size": size, "seed": seed}

    def make(tmp: Path) -> BuiltDataset:
        design = assign_colours(per_class, rho, shift, seed)
        measured = agreement(design)
        log(f"{NAME}: drawing {len(SHAPES) * per_class} images of {size}x{size} (rho {rho}, "
            f"{shift} at test, seed {seed}); own-colour share: train {measured['train']:.4f}, "
            f"dev {measured['dev']:.4f}, test {measured['test']:.4f}")
        attributes = {}
        for k, shape in enumerate(SHAPES):
            folder = tmp / label_folder(k)
            folder.mkdir()
            for i, (split, c) in enumerate(design[k]):
                name = f"{i:04d}_{split}_{COLOUR_NAMES[c]}.png"
                img = draw_image(shape, COLOUR_NAMES[c], size, _Rng(f"mamf-spurious/{seed}/{k}/{i}"))
                img.save(folder / name, compress_level=1)
                attributes[f"{folder.name}/{name}"] = {"split": split, "background": COLOUR_NAMES[c],
                                                       "agrees": c == k}
        (tmp / "attributes.json").write_text(json.dumps(attributes, indent=1, sort_keys=True) + "\n",
                                             encoding="utf-8")
        pairs = ", ".join(f"{s} {c}" for s, c in zip(SHAPES, COLOUR_NAMES))
        splits = per_class_split(per_class)
        return BuiltDataset(
            title=f"Spurious: shapes on class-coloured backgrounds (rho = {rho}, {shift} at test)",
            label_to_text={label_folder(k): prompt(s) for k, s in enumerate(SHAPES)},
            source="Generated by `mamf.data.builders.spurious` (no external data).",
            licence="Generated data; no third-party content. Use freely (same licence as mamf, "
                    "Apache-2.0).",
            method=(
                f"Ten classes, each a shape: {', '.join(SHAPES)}. Each image holds one shape of "
                "random size, place and rotation, in a near-black or near-white colour of random "
                f"hue, on a plain background (each channel jittered by up to {JITTER}). Each class "
                f"owns a background colour ({pairs}). Images of a class are split in file-name "
                f"order as the paper protocol does: the first {splits['train'].stop} train, the "
                f"next {splits['dev'].stop - splits['dev'].start} dev, the last "
                f"{splits['test'].stop - splits['test'].start} test. **rho = {rho}**: "
                f"round(rho x {splits['train'].stop * len(SHAPES)}) training images overall are on "
                "their class's own colour (spread evenly over classes), the rest cycle through the "
                "other nine colours. Dev and test: "
                + ("every colour equally often in every class (colour independent of the label; "
                   "exactly so when a split holds a multiple of ten images a class)."
                   if shift == "independent" else
                   "always the colour of the next class (the shortcut is reversed).")
                + f" Measured share of images on their class's own colour: train "
                f"{measured['train']:.4f}, dev {measured['dev']:.4f}, test {measured['test']:.4f}. "
                "File `0007_train_red.png` is image 7 of its class, in the training part, on red; "
                "`attributes.json` lists every image's split, background and whether it agrees. "
                f"Each image has its own random generator seeded by "
                f"`mamf-spurious/{{seed}}/{{class}}/{{i}}` (seed={seed})."),
            notes=("rho is the strength of the shortcut: 0.1 is no correlation (ten colours), 1.0 "
                   "makes colour as good as shape in training. Use `data.protocol: paper` (every "
                   "split keeps all classes); under a protocol that splits classes the correlation "
                   "has no meaning. Prompts: \"An image of a {shape}.\""),
            extra={"rho": rho, "shift": shift, "agreement": measured,
                   "colours": dict(zip(SHAPES, COLOUR_NAMES))},
        )

    return build_with(NAME, out, options, log, make, version=VERSION)
