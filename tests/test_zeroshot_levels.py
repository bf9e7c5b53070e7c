"""Zero-shot levels: emoji classes ranked by a model's zero-shot score on one style, split into
equal groups; and claim 2's figure of the gains against zero-shot accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_builders import Log, _fake_package, _png, check_layout

from mamf.data.builders import BUILDERS
from mamf.data.builders import emoji as emoji_mod
from mamf.data.builders.emoji_levels import class_scores
from mamf.report import claim2, write_report
from mamf.report import zeroshot as zeroshot_mod
from mamf.stats import paired
from mamf.system.errors import MamfError


class Stub:
    """A model whose image embedding is the image's mean red value times a fixed direction, and
    whose prompt k embeds as a fixed vector: similarities are known in advance."""

    image_size = 8

    def __init__(self, texts: np.ndarray):
        self.texts = torch.tensor(texts, dtype=torch.float32)

    def eval(self):
        return self

    def tokenize(self, prompts):
        return {"ids": torch.arange(len(prompts))}

    def encode_texts(self, tokens):
        return self.texts[tokens["ids"]]

    def preprocess(self, pixels):
        return pixels.float()

    def encode_images(self, x):
        red = x[..., 0].mean(dim=(1, 2)) / 255.0
        return torch.stack([torch.cos(3 * red), torch.sin(3 * red)], dim=1)


def test_class_scores_are_the_share_of_other_prompts_ranked_below(tmp_path):
    from PIL import Image

    angles = np.array([0.3, 1.2, 2.1, 0.9])
    paths = []
    for k, a in enumerate(angles):
        p = tmp_path / f"{k}.png"
        Image.new("RGB", (8, 8), (int(round(255 * a / 3)), 0, 0)).save(p)
        paths.append(p)
    texts = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    texts[3] = [np.cos(2.0), np.sin(2.0)]  # class 3's prompt points away from its image
    scores = class_scores(Stub(texts), paths, ["a", "b", "c", "d"])
    red = 3 * np.round(255 * angles / 3) / 255  # what the stub reads back from the pixels
    img = np.stack([np.cos(red), np.sin(red)], 1)
    sim = img @ (texts / np.linalg.norm(texts, axis=1, keepdims=True)).T
    expect = [(sim[i] < sim[i, i]).sum() / 3 for i in range(4)]
    assert scores.tolist() == pytest.approx(expect)
    assert scores[0] == 1.0 and scores[3] < 1.0


@pytest.fixture
def emoji_root(tmp_path) -> Path:
    names = ["APPLE", "BANANA", "CHERRY", "DOG", "EAGLE", "FROG", "GRAPES", "HORSE", "IGLOO"]
    entries = [{"name": n, "short_name": n.lower(), "unified": f"1F{k:03X}", "image": f"1f{k:03x}.png",
                "category": "Food", "subcategory": "fruit", "sort_order": k, "added_in": "1.0",
                "has_img_google": True, "has_img_twitter": True} for k, n in enumerate(names)]
    cache = tmp_path / "cache"
    cache.mkdir()
    for image_set in ("google", "twitter"):
        images = {e["image"]: _png((25 * k, 200 - 20 * k, 60, 255), mark=k)
                  for k, e in enumerate(entries)}
        _fake_package(cache / f"{emoji_mod.SETS[image_set]}-{emoji_mod.NPM_VERSION}.tgz",
                      image_set, entries, images)
    return BUILDERS["emoji"](tmp_path / "data" / "emoji", log=Log(), cache_dir=cache)


def test_levels_partition_the_classes_by_score(emoji_root, tmp_path):
    logs = [Log() for _ in range(3)]
    built = [BUILDERS["emoji-levels"](tmp_path / "data" / f"level{k}", log=logs[k], level=k,
                                      levels=3, model="tiny-random-clip", source=emoji_root)
             for k in range(3)]
    assert any("scoring 9 classes" in line for line in logs[0])
    assert all(any("using the zero-shot scores kept" in line for line in log) for log in logs[1:])
    classes = [json.loads((root / "classes.json").read_text()) for root in built]
    for root in built:
        check_layout(root, 3, 6)
        text = (root / "DATASET.md").read_text(encoding="utf-8")
        assert "tiny-random-clip" in text and "Apache License 2.0" in text and "| level |" in text
    labels = [set(c) for c in classes]
    assert set().union(*labels) == set(json.loads((emoji_root / "classes.json").read_text()))
    assert sum(len(s) for s in labels) == 9
    scores = [sorted(v["zeroshot_score"] for v in c.values()) for c in classes]
    assert scores[0][-1] <= scores[1][0] and scores[1][-1] <= scores[2][0]
    # the images are the source's own
    label = next(iter(classes[2]))
    assert (built[2] / label / "twitter.png").read_bytes() == \
        (emoji_root / label / "twitter.png").read_bytes()
    manifest = json.loads((built[0] / ".mamf-dataset.json").read_text())
    assert manifest["zeroshot"]["model"] == "tiny-random-clip" and len(manifest["zeroshot"]["bounds"]) == 3


def test_levels_bad_options(tmp_path, emoji_root):
    for bad, match in (({"level": 3}, "level must be below"), ({"style": "apple"}, "style must be"),
                       ({"levels": 1}, "levels must be")):
        with pytest.raises(MamfError, match=match):
            BUILDERS["emoji-levels"](tmp_path / "x", log=Log(), model="tiny-random-clip", **bad)
    with pytest.raises(MamfError, match="no 'openmoji' images"):
        BUILDERS["emoji-levels"](tmp_path / "data" / "y", log=Log(), model="tiny-random-clip",
                                 style="openmoji", source=emoji_root)
    with pytest.raises(MamfError, match="levels=5 cuts the source's 9 classes into groups of "
                                        "fewer than 2"):
        BUILDERS["emoji-levels"](tmp_path / "data" / "w", log=Log(), model="tiny-random-clip",
                                 level=0, levels=5, source=emoji_root)
    with pytest.raises(MamfError, match="not a finished emoji build"):
        BUILDERS["emoji-levels"](tmp_path / "z", log=Log(), source=tmp_path)


def row(method, dataset, seed, accs):
    from mamf.results import Row

    accs = [float(a) for a in accs]
    return Row.from_json({
        "method": method, "model": "m", "dataset": dataset, "protocol": "episodic", "ways": 5,
        "shots": 1, "queries": 1, "seed": seed, "split": "test", "n_tasks": len(accs),
        "acc_mean": float(np.mean(accs)), "acc_ci95": 0.0, "task_accs": accs, "time_s": 1.0,
        "host": "vm", "run": None})


def test_claim2_figure_plots_the_paired_gains(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = []
    for d, z in (("level0", 0.22), ("level1", 0.45), ("level2", 0.8)):
        for seed in (1, 2, 3):
            for method, acc in (("zeroshot", z), ("fomaml", z + 0.2 * z), ("mamf", 0.6)):
                rows.append(row(method, d, seed, list(np.clip(acc + rng.normal(0, 0.05, 8), 0, 1))))
    drawn = []
    original = zeroshot_mod.pyplot

    def spy():
        plt = original()
        import matplotlib.axes

        real = matplotlib.axes.Axes.errorbar

        def errorbar(self, xs, ys, *a, **kw):
            drawn.append((list(xs), list(ys)))
            return real(self, xs, ys, *a, **kw)

        monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
        return plt

    monkeypatch.setattr(zeroshot_mod, "pyplot", spy)
    files = write_report(rows, tmp_path, "levels")
    assert files["fomaml"].is_file()
    judged = claim2(rows)
    assert [c.dataset for c in judged] == ["level0", "level1", "level2"]

    def by_seed(method, d):
        return {r.seed: r.task_accs for r in rows if r.method == method and r.dataset == d}

    levels = ("level0", "level1", "level2")
    fomaml_gain = [paired(by_seed("fomaml", d), by_seed("zeroshot", d)).mean for d in levels]
    mamf_gain = [paired(by_seed("mamf", d), by_seed("fomaml", d)).mean for d in levels]
    assert drawn[0][1] == pytest.approx(fomaml_gain) and drawn[1][1] == pytest.approx(mamf_gain)
    assert drawn[0][0] == pytest.approx([c.zero_shot for c in judged])


def test_the_claims_contrast_tests_each_difference_from_the_lowest_to_the_highest_level():
    """Per seed: the difference at the highest zero-shot level minus at the lowest; t over the
    seeds; a fall of MAMF - FOMAML is the claim's way, so it holds; FOMAML's gain does not rise."""
    from scipy import stats as scipy_stats

    from mamf.report.claims import claim2_contrasts, claims_markdown

    rng = np.random.default_rng(1)
    rows = []
    # level1 lies between the two ends and must not enter the contrast
    for d, z, lead in (("level0", 0.22, 0.10), ("level1", 0.3, 0.5), ("level2", 0.8, -0.02)):
        for seed in (1, 2, 3, 4):
            noise = rng.normal(0, 0.03, 6)
            rows += [row("zeroshot", d, seed, list(np.full(6, z))),
                     row("fomaml", d, seed, list(z + 0.1 + noise)),
                     row("mamf", d, seed, list(z + 0.1 + lead + noise + rng.normal(0, 0.02, 6)))]

    def gain(a, b, d, seed):
        pick = {m: next(r.task_accs for r in rows if (r.method, r.dataset, r.seed)
                        == (m, d, seed)) for m in (a, b)}
        return float(np.mean(np.subtract(pick[a], pick[b])))

    found = {c.difference: c for c in claim2_contrasts(rows, claim2(rows))}
    assert set(found) == {"FOMAML − zero-shot", "MAMF − FOMAML"}
    for name, (a, b) in {"MAMF − FOMAML": ("mamf", "fomaml"),
                         "FOMAML − zero-shot": ("fomaml", "zeroshot")}.items():
        per_seed = [gain(a, b, "level2", s) - gain(a, b, "level0", s) for s in (1, 2, 3, 4)]
        c = found[name]
        assert (c.low.dataset, c.high.dataset) == ("level0", "level2")
        assert c.change.mean == pytest.approx(np.mean(per_seed)) and c.change.seeds == 4
        half = scipy_stats.t.ppf(0.975, 3) * np.std(per_seed, ddof=1) / 2
        assert c.change.ci95 == pytest.approx(half)
    assert found["MAMF − FOMAML"].change.mean < -0.1
    assert found["MAMF − FOMAML"].verdict == "holds"  # a fall, as the claim expects
    assert found["FOMAML − zero-shot"].verdict == "inconclusive"  # no change but noise
    text = claims_markdown(rows)
    assert "**The claim's contrast**, from the lowest zero-shot accuracy (level0, 0.220)" in text
    assert "*holds* when the change goes the way the claim expects" in text
    # every level below the claim's 'low' bound: no contrast to test
    assert claim2_contrasts(rows, [c for c in claim2(rows) if c.dataset != "level2"]) == []


def test_the_zeroshot_levels_study_config():
    from mamf.runs.experiment import load_experiment, run_config

    path = Path(__file__).resolve().parents[1] / "configs" / "zeroshot-levels-offline.yaml"
    exp = load_experiment(path)
    assert exp.seeds == [312, 313, 314, 315, 316]
    cuts = [(ds.build_options["level"], ds.build_options["levels"]) for ds in exp.datasets]
    assert [k for k, n in cuts if n == 3] == [0, 1, 2] and all(0 <= k < n for k, n in cuts)
    for ds in exp.datasets:
        config = run_config(exp, ds, "fomaml", 312, "/data")
        assert (config.data.support_match, config.data.query_match) == ("google", "twitter")


def test_levels_write_nothing_beside_their_output_or_source(tmp_path, emoji_root, monkeypatch):
    """The scores (and a default source, with its downloads) go to mamf's cache folder."""
    monkeypatch.setenv("MAMF_CACHE_DIR", str(tmp_path / "mamf-cache"))
    before = sorted(p.name for p in emoji_root.parent.iterdir())
    out = tmp_path / "elsewhere" / "level0"
    BUILDERS["emoji-levels"](out, log=Log(), level=0, levels=3, model="tiny-random-clip",
                             source=emoji_root)
    assert sorted(p.name for p in emoji_root.parent.iterdir()) == before
    assert [p.name for p in out.parent.iterdir()] == ["level0"]
    assert len(list((tmp_path / "mamf-cache" / "zeroshot-scores").iterdir())) == 1
