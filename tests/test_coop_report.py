"""The report's "The field's benchmark" section: the 11-dataset table beside the published
averages (each with its source and how it was read), both harmonic-mean conventions of
base-to-novel, and ImageNet's variants."""

from __future__ import annotations

import numpy as np
from conftest import results_row

from mamf.data import coop_layouts
from mamf.protocols.base2novel import harmonic_mean
from mamf.report.benchmark import benchmark_section, hm_conventions, load_anchors
from mamf.results import Row

ELEVEN = [coop_layouts.by_key(k).name for k in coop_layouts.benchmark_keys()[0]]
KEYS = dict(zip(ELEVEN, coop_layouts.benchmark_keys()[0]))
ALL_KEYS = {x.name: x.key for x in coop_layouts.layouts()}
B16 = "openai/clip-vit-base-patch16"


def row(dataset, method, shots, seed, acc, model=B16, protocol="coop", entry=None, over=None,
        **extra):
    """A Row; `over` replaces any of its fields (a variant's dataset, no experiment entry)."""
    return Row.from_json({
        "method": method, "model": model, "dataset": KEYS.get(dataset, dataset),
        "experiment_dataset": entry or KEYS.get(dataset, dataset), "coop_dataset": dataset,
        "protocol": protocol, "ways": 10, "shots": shots, "queries": 50, "seed": seed,
        "split": "test", "acc_mean": acc, **extra, **(over or {})})


def few_shot_rows(model=B16):
    out = []
    for i, d in enumerate(ELEVEN):
        for k in (1, 16):
            for s in (1, 2, 3):
                out.append(row(d, "zeroshot", k, s, 0.50 + 0.01 * i, model))
                out.append(row(d, "classical", k, s, 0.60 + 0.01 * s, model,
                               entry=f"{KEYS[d]}-clip-lora"))
    return out


def test_the_eleven_dataset_table_sits_beside_the_published_averages_with_their_sources():
    text = "\n".join(benchmark_section(few_shot_rows()))
    assert "### 16-shot (coop protocol)" in text
    zs = np.mean([0.50 + 0.01 * i for i in range(11)])
    assert "| zero-shot | 50.0 | 51.0 |" in text and f"| {100 * zs:.1f} | 3 |" in text
    assert "| classical FT (clip-lora) | 62.0 |" in text  # the entry's suffix labels its rows
    anchors = load_anchors()
    lora = next(a for a in anchors["methods"] if a["method"] == "CLIP-LoRA")
    assert lora["shots"] == {"1": 72.6, "2": 75.5, "4": 77.5, "8": 80.2, "16": 82.9}
    assert "| CLIP-LoRA (*published*) |" in text and "| 82.9 | - |" in text and "| 72.6 | - |" in text
    assert "read off the paper's figure" in text and lora["source"] in text
    assert all("read" in a and "source" in a for a in anchors["methods"])
    assert "| 83.0 |" not in text  # the unsourced value is gone


def test_no_published_numbers_beside_another_backbone():
    text = "\n".join(benchmark_section(few_shot_rows("tiny-random-clip")))
    assert "(*published*)" not in text
    assert "No published numbers beside these: they are for ViT-B/16" in text


def test_an_average_needs_all_eleven_datasets():
    rows = [r for r in few_shot_rows() if r.coop_dataset != "UCF101"]
    lines = [x for x in benchmark_section(rows) if x.startswith("| zero-shot |")]
    assert lines and all(x.endswith("| - | 3 |") for x in lines)


def test_base_to_novel_reports_both_harmonic_mean_conventions():
    rng = np.random.default_rng(0)
    base = {d: float(rng.uniform(0.6, 0.95)) for d in ELEVEN}
    novel = {d: float(rng.uniform(0.3, 0.9)) for d in ELEVEN}
    rows = [row(d, "coop", 16, s, harmonic_mean(base[d], novel[d]), protocol="base2novel",
                entry=f"{KEYS[d]}-base2novel", base_acc=base[d], novel_acc=novel[d],
                hm=harmonic_mean(base[d], novel[d]))
            for d in ELEVEN for s in (1, 2)]
    per_dataset, of_averages = hm_conventions(base, novel)
    assert abs(per_dataset - np.mean([harmonic_mean(base[d], novel[d]) for d in ELEVEN])) < 1e-12
    b, n = np.mean(list(base.values())), np.mean(list(novel.values()))
    assert abs(of_averages - 2 * b * n / (b + n)) < 1e-12
    assert abs(per_dataset - of_averages) > 0.001  # the two conventions are two numbers
    text = "\n".join(benchmark_section(rows))
    assert (f"| CoOp | 16 | {100 * b:.1f} | {100 * n:.1f} | {100 * of_averages:.1f} | "
            f"{100 * per_dataset:.1f} |") in text
    # CoCoOp's published average is an HM of averages: it sits in that column only
    assert "| CoCoOp (*published*) | 16 | 80.47 | 71.69 | 75.83 | - |" in text
    assert "its convention: HM of averages" in text
    anchors = load_anchors()["base2novel"]
    for a in anchors["methods"]:  # the convention recorded is the one its numbers follow
        assert abs(harmonic_mean(a["base"], a["novel"]) - a["hm"]) < 0.006


def test_imagenet_runs_on_the_variants_line_up_by_run():
    rows = []
    for s in (1, 2):
        run = f"runs/imagenet-s{s}"
        rows.append(row("ImageNet", "classical", 16, s, 0.70, run=run))
        for v, acc in (("ImageNetV2", 0.6), ("ImageNetSketch", 0.45), ("ImageNetA", 0.4),
                       ("ImageNetR", 0.7)):
            rows.append(row(v, "classical", 16, s, acc, run=run,
                            over={"dataset": v.lower(), "experiment_dataset": None}))
    text = "\n".join(benchmark_section(rows))
    assert "### ImageNet to its variants" in text
    assert "| classical FT | 16 | 70.0 | 60.0 | 45.0 | 40.0 | 70.0 | 53.8 |" in text


def test_a_grids_imagenet_rows_line_up_with_its_variant_rows_by_method_shots_and_seed():
    rows = [row("ImageNet", "mamf", 4, 1, 0.66, experiment="bench"),
            row("ImageNet", "classical", 4, 1, 0.70, experiment="bench",
                entry="imagenet-clip-lora")]
    for v in ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"):
        rows.append(row(v, "mamf", 4, 1, 0.5, experiment="bench", over={"dataset": v.lower()}))
        rows.append(row(v, "classical", 4, 1, 0.6, experiment="bench",
                        over={"dataset": v.lower(),
                              "experiment_dataset": f"{ALL_KEYS[v]}-clip-lora"}))
    text = "\n".join(benchmark_section(rows))
    assert "| MAMF | 4 | 66.0 | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 |" in text
    assert "| classical FT (clip-lora) | 4 | 70.0 | 60.0 | 60.0 | 60.0 | 60.0 | 60.0 |" in text


def test_the_setup_names_coops_templates_from_the_rows():
    from mamf.report.setup import _templates

    pairs = [(results_row(prompts="coop", template="{} texture."), None),
             (results_row(prompts="coop", template="a photo of a {}."), None)]
    assert _templates(pairs) == "CoOp's template per dataset (a photo of a {}.; {} texture.)"
