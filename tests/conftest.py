"""Shared fixtures: small generated image folders whose classes are visually distinct."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` means the CPU in tests, subprocesses and torchrun's workers included: the tests assert
# bit-exact fp32 numbers, which a GPU in bf16 would not give (a device test asks for its device)
os.environ["MAMF_DEVICE"] = "cpu"

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mamf.plugins  # noqa: F401  (the built-in plug-ins join the settings catalogue, as entry points do)

COLOURS = {
    "red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
    "yellow": (230, 220, 30), "magenta": (210, 30, 210), "cyan": (30, 210, 210),
    "black": (15, 15, 15), "white": (240, 240, 240), "orange": (240, 140, 20),
    "purple": (110, 30, 160), "grey": (128, 128, 128), "brown": (120, 70, 20),
}


def make_folder(root: Path, n_classes: int = 6, per_class: int = 10, size: int = 24,
                seed: int = 0) -> Path:
    """Colour classes with noise and a random bright/dark patch: distinct, not trivial."""
    rng = np.random.default_rng(seed)
    for name, rgb in list(COLOURS.items())[:n_classes]:
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 25, (size, size, 3)), 0, 255)
            y, x = rng.integers(0, size // 2, 2)
            img[y : y + size // 3, x : x + size // 3] *= rng.uniform(0.6, 1.2)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img_{i:03d}.png")
    return root


def results_row(**fields):
    """A `mamf.results.Row` of `fields`, the key's other fields filled in (a zero-shot paper row
    of one seed on `counting`): what the report's readers get from `read_rows`."""
    from mamf.results import Row

    base = {"method": "zeroshot", "model": "m", "dataset": "counting", "protocol": "paper",
            "ways": 5, "shots": 1, "queries": 5, "seed": 1, "split": "test"}
    return Row.from_json({**base, **fields})


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mamf-cache"))


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "colours")


@pytest.fixture(scope="session")
def shared_colour_folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("shared") / "colours", n_classes=10, per_class=10)


def one_error_line(capsys) -> str:
    """The one `mamf: error` line a refused command printed (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mamf: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def evaluate(folder, out, *extra):
    """`mamf evaluate` of the tiny model, 2-way, quiet; its exit code."""
    from mamf.cli import main

    return main(["evaluate", "--model", "tiny-random-clip", "--data", str(folder), "--out",
                 str(out), "--ways", "2", "--quiet", *extra])
