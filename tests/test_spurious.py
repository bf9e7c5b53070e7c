"""The spurious-correlation builder: measured agreement is rho, dev/test are as asked, bytes repeat."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamf.data.builders import BUILDERS, build
from mamf.data.builders import spurious as sp
from mamf.data.dataset import ImageDataset
from mamf.data.folder import scan_folder
from mamf.data.splits import per_class_split
from mamf.system.errors import MamfError


def measured(root: Path) -> dict[str, list[tuple[int, int]]]:
    """Per split, (class, background colour) read from the pixels: the border's nearest palette
    colour, with the split taken from the file's place in its class (the paper protocol's)."""
    palette = np.array(list(sp.COLOURS.values()), dtype=float)
    scan = scan_folder(root)
    out: dict[str, list[tuple[int, int]]] = {"train": [], "dev": [], "test": []}
    for k, files in enumerate(scan.files):
        parts = per_class_split(len(files))
        for split, sl in parts.items():
            for f in files[sl]:
                with Image.open(f) as im:
                    a = np.asarray(im.convert("RGB"), dtype=float)
                border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]).mean(axis=0)
                out[split].append((k, int(np.argmin(((palette - border) ** 2).sum(axis=1)))))
    return out


def share(pairs: list[tuple[int, int]]) -> float:
    return sum(k == c for k, c in pairs) / len(pairs)


@pytest.mark.parametrize("rho", [0.1, 0.5, 0.75, 1.0])
def test_training_agreement_is_rho_and_test_independent(tmp_path, rho):
    root = build("spurious", tmp_path / "s", log=lambda m: None, rho=rho, per_class=50, size=16)
    got = measured(root)
    # 30 training images a class, 300 in all: rho * 300 is an integer, so the count is exact
    assert sum(k == c for k, c in got["train"]) == round(rho * 300)
    for split in ("dev", "test"):  # 10 images a class: every colour once
        counts = np.zeros((10, 10), int)
        for k, c in got[split]:
            counts[k, c] += 1
        assert share(got[split]) == pytest.approx(0.1)
        assert (counts == 1).all()  # colour independent of class, exactly
    manifest = json.loads((root / ".mamf-dataset.json").read_text())
    assert manifest["rho"] == rho and manifest["agreement"]["train"] == pytest.approx(share(got["train"]))
    assert f"rho = {rho}" in (root / "DATASET.md").read_text()


def test_agreement_within_sampling_error_when_not_exact():
    design = sp.assign_colours(100, 0.333, "independent", seed=3)
    assert abs(sp.agreement(design)["train"] - 0.333) <= 0.5 / 600
    per_class = [sum(c == k for s, c in rows if s == "train") for k, rows in enumerate(design)]
    assert max(per_class) - min(per_class) <= 1
    test = [c for k, rows in enumerate(design) for s, c in rows if s == "test"]
    assert np.bincount(test, minlength=10).tolist() == [20] * 10
    # 3 test images a class: not a whole cycle; own colour with probability 3/10 per class
    shares = [sp.agreement(sp.assign_colours(15, 0.5, "independent", seed=s))["test"]
              for s in range(200)]
    assert abs(np.mean(shares) - 0.1) < 4 * np.std(shares) / np.sqrt(len(shares))


def test_reversed_test_uses_the_next_class_colour(tmp_path):
    root = build("spurious", tmp_path / "r", log=lambda m: None, rho=0.9, shift="reversed",
                 per_class=5, size=24)
    got = measured(root)
    assert all(c == (k + 1) % 10 for k, c in got["test"] + got["dev"])
    assert sum(k == c for k, c in got["train"]) == round(0.9 * 30)
    attrs = json.loads((root / "attributes.json").read_text())
    assert len(attrs) == 50 and all(a["agrees"] is False for a in attrs.values() if a["split"] == "test")


def test_same_seed_same_bytes_and_readable_classes(tmp_path):
    a = BUILDERS["spurious"](tmp_path / "a", log=lambda m: None, rho=0.8, per_class=5, size=24)
    b = BUILDERS["spurious"](tmp_path / "b", log=lambda m: None, rho=0.8, per_class=5, size=24)
    c = BUILDERS["spurious"](tmp_path / "c", log=lambda m: None, rho=0.8, per_class=5, size=24,
                             seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 50
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any(not (c / f).exists() or (a / f).read_bytes() != (c / f).read_bytes() for f in files)
    mapping = json.loads((a / "label_to_text.json").read_text())
    assert mapping["03_star"] == "An image of a star."
    ds = ImageDataset.load(a, 24)
    assert ds.n_classes == 10 and ds.prompts[9] == "An image of a crescent."


def test_shapes_differ_and_bad_options_are_one_line(tmp_path):
    masks = {s: np.asarray(sp._shape_mask(s, 64, 32, 32, 20, 0.3)) for s in sp.SHAPES}
    assert all(m.any() for m in masks.values())
    assert len({m.tobytes() for m in masks.values()}) == len(sp.SHAPES)
    for bad in ({"rho": 1.5}, {"rho": "high"}, {"shift": "flipped"}, {"per_class": 2}):
        with pytest.raises(MamfError, match="spurious: "):
            build("spurious", tmp_path / "x", log=lambda m: None, **bad)
    assert not (tmp_path / "x").exists()


def test_the_spurious_study_config():
    """configs/spurious-offline.yaml: >= 4 rho values, 5 seeds, one entry per (rho, capacity)."""
    from mamf.runs.experiment import load_experiment, run_config

    exp = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "spurious-offline.yaml")
    assert exp.seeds == [312, 313, 314, 315, 316]
    assert exp.methods == ["zeroshot", "classical", "mamf", "fomaml"]
    rhos = {}
    for ds in exp.datasets:
        assert ds.build == "spurious"
        config = run_config(exp, ds, "classical", 312, "/data")
        assert config.data.protocol == "paper"
        t = config.train
        rhos.setdefault(ds.build_options["rho"], set()).add(
            0 if t.freeze_image_backbone else t.unfreeze_image_blocks)
    # each rho at two capacities: the frozen towers' heads, and the last image block too
    assert len(rhos) >= 4 and all(caps == {0, 1} for caps in rhos.values())
