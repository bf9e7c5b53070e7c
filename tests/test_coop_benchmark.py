"""The field's benchmark as one command: configs/coop-benchmark.yaml with the data root given once
(`--data-root`), a dataset's own shots axis, `mamf data check`, and an ImageNet run scored on
a variant over the variant's own classes; on the miniature replicas of CoOp's folders."""

from __future__ import annotations

import json
from pathlib import Path

import coop_replicas as replicas
import pytest

from mamf.cli import main
from mamf.data import coop_layouts
from mamf.data.dataset import class_count
from mamf.results import Row
from mamf.runs.experiment import load_experiment, run_config
from mamf.runs.experiment_file import dataset_root
from mamf.system.errors import MamfError

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "configs" / "coop-benchmark.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return replicas.build_all(tmp_path_factory.mktemp("coop-bench") / "DATA")


def test_the_benchmark_config_is_the_fields_grid(data, monkeypatch):
    exp = load_experiment(BENCHMARK)
    assert exp.model == "openai/clip-vit-base-patch16"
    assert exp.seeds == [1, 2, 3] and exp.shots == [1, 2, 4, 8, 16]
    eleven, variants = coop_layouts.benchmark_keys()
    by_name = {d.name: d for d in exp.datasets}
    assert [d for d in by_name if "-" not in d] == eleven + variants
    for v in variants:
        assert by_name[v].runs_of == "imagenet"
        assert by_name[f"{v}-clip-lora"].runs_of == "imagenet-clip-lora"
    with pytest.raises(MamfError, match="names the data root: pass --data-root DATA"):
        dataset_root(by_name["imagenet"], Path("/out"))
    monkeypatch.setenv("MAMF_DATA", str(data))
    for key in eleven:
        root = Path(dataset_root(by_name[key], Path("/out")))
        assert coop_layouts.recognise(root) == coop_layouts.by_key(key)
        assert dataset_root(by_name[f"{key}-clip-lora"], Path("/out")) == str(root)
        b2n = by_name[f"{key}-base2novel"]
        assert b2n.shots == [16]
        assert run_config(exp, b2n, "coop", 1, str(root)).data.protocol == "base2novel"
        lora = run_config(exp, by_name[f"{key}-clip-lora"], "classical", 1, str(root))
        assert lora.train.adapter == "lora" and lora.train.lora_rank == 2
        assert lora.train.steps_per_shot == 500
        assert run_config(exp, by_name[key], "mamf", 1, str(root)).data.protocol == "coop"
    header = BENCHMARK.read_text().split("\nname:")[0]
    assert "Expected cost on one GPU" in header


TINY = """\
name: tiny-benchmark
model: tiny-random-clip
methods: [zeroshot, prototype]
seeds: [1]
shots: [1, 2]
settings:
  data: {protocol: coop}
  train: {freeze_image_backbone: true, freeze_text_tower: true}
datasets:
  oxford_pets:
    root: ${MAMF_DATA}/oxford_pets
  fgvc_aircraft:
    root: ${MAMF_DATA}/fgvc_aircraft
  dtd-base2novel:
    root: ${MAMF_DATA}/dtd
    settings: {data: {protocol: base2novel}}
    shots: [2]
    methods: [zeroshot]
"""


def test_a_benchmark_grid_runs_from_the_data_root_and_resumes(data, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setenv("MAMF_DATA", str(tmp_path / "elsewhere"))  # --data-root replaces it
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = tmp_path / "out"
    assert main(["experiment", str(config), "--data-root", str(data), "--out", str(out),
                 "--quiet"]) == 0
    rows = [Row.from_json(json.loads(x)) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2 + 1
    pets = [r for r in rows if r.experiment_dataset == "oxford_pets"]
    assert {r.coop_dataset for r in pets} == {"OxfordPets"}
    assert {r.template for r in pets} == {"a photo of a {}, a type of pet."}
    assert {r.ways for r in pets} == {3} and {r.shots for r in pets} == {1, 2}
    (b2n,) = [r for r in rows if r.protocol == "base2novel"]
    assert b2n.shots == 2 and b2n.coop_dataset == "DescribableTextures"
    capsys.readouterr()
    assert main(["experiment", str(config), "--data-root", str(data), "--out", str(out),
                 "--quiet"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)


def test_a_grid_under_the_data_root_without_it_is_one_line_before_anything_runs(
        tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MAMF_DATA", raising=False)
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    assert main(["experiment", str(config), "--out", str(tmp_path / "out"), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "3 dataset(s) of tiny-benchmark (oxford_pets, ...) live under the data root: pass " \
        "--data-root DATA" in err
    assert not (tmp_path / "out" / "failures.jsonl").exists()


def test_a_datasets_own_shots_need_the_experiments_axis(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("shots: [1, 2]\n", ""))
    with pytest.raises(MamfError, match="its own 'shots' need the experiment's 'shots' axis"):
        load_experiment(bad)


def test_data_check_lists_the_15_datasets_with_counts_against_the_splits(data, tmp_path,
                                                                        capsys):
    assert main(["data", "check", str(data)]) == 0
    out = capsys.readouterr().out
    assert "15 of 15 ready" in out
    assert "OxfordPets" in out and "15/15" in out and "200/200" in out
    partial = tmp_path / "DATA"
    replicas.pets(partial)
    (partial / "oxford_pets" / "images" / "Abyssinian_1.jpg").unlink()
    replicas.imagenet_a(partial)
    (partial / "imagenet-adversarial" / "classnames.txt").unlink()
    assert main(["data", "check", str(partial)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(x.startswith("OxfordPets") and "incomplete" in x and "14/15" in x for x in lines)
    assert any(x.startswith("ImageNetA") and "incomplete" in x for x in lines)
    assert any(x.startswith("Caltech101") and "absent" in x for x in lines)
    assert "ImageNetA: " in out and "classnames.txt is missing" in out
    assert "0 of 15 ready" in out


def test_class_count_reads_layouts_and_plain_folders(data, tmp_path):
    from conftest import make_folder

    assert class_count(data / "imagenet-adversarial") == 200
    assert class_count(data / "imagenet") == len(replicas.IMAGENET)
    assert class_count(make_folder(tmp_path / "plain", n_classes=4, per_class=2)) == 4


def test_an_imagenet_run_is_scored_on_a_variant_over_its_own_classes(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(data / "imagenet"), "--protocol", "coop", "--shots", "2", "--seed", "1",
                 "--steps", "2", "--out", str(run)]) == 0
    out = tmp_path / "scores"
    for variant, n in (("imagenet-adversarial", 200), ("imagenet-rendition", 200),
                       ("imagenetv2", 4), ("imagenet-sketch", 4)):
        assert main(["evaluate", "--run", str(run), "--data", str(data / variant), "--out",
                     str(out)]) == 0
        row = Row.from_json(json.loads((out / "results.jsonl").read_text().splitlines()[-1]))
        assert row.dataset == variant and row.ways == n and row.method == "classical"
        assert row.queries == sum(p.suffix.lower() in (".jpg", ".jpeg")
                                     for p in (data / variant).rglob("*"))
        assert row.coop_dataset == coop_layouts.recognise(data / variant).name
        assert row.shots == 2  # the run's K on ImageNet; the variant gives no support
    capsys.readouterr()
    assert main(["train", "--method", "classical", "--model", "tiny-random-clip", "--data",
                 str(data / "imagenet-adversarial"), "--protocol", "coop", "--shots", "2",
                 "--steps", "1", "--out", str(tmp_path / "no")]) != 0
    assert "test-only dataset (CoOp's ImageNetA)" in capsys.readouterr().err


VARIANTS = """\
name: tiny-variants
model: tiny-random-clip
methods: [zeroshot, classical]
seeds: [1]
shots: [1, 2]
settings:
  data: {protocol: coop}
  train: {freeze_image_backbone: true, freeze_text_tower: true, steps: 2, lr: 0.01}
datasets:
  imagenet:
    root: ${MAMF_DATA}/imagenet
  imagenet_a:
    root: ${MAMF_DATA}/imagenet-adversarial
    runs_of: imagenet
  imagenetv2:
    root: ${MAMF_DATA}/imagenetv2
    runs_of: imagenet
"""


def test_imagenets_runs_are_scored_on_the_variants_in_the_grid_and_resume(data, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("MAMF_DATA", str(data))
    config = tmp_path / "variants.yaml"
    config.write_text(VARIANTS)
    out = tmp_path / "out"
    assert main(["experiment", str(config), "--out", str(out), "--quiet"]) == 0
    results = out / "results.jsonl"
    rows = [Row.from_json(json.loads(x)) for x in results.read_text().splitlines()]
    by_entry = {}
    for r in rows:
        by_entry.setdefault(r.experiment_dataset, []).append(r)
    assert sorted(by_entry) == ["imagenet", "imagenet_a", "imagenetv2"]
    assert {(r.method, r.shots) for r in by_entry["imagenet_a"]} == \
        {(m, k) for m in ("zeroshot", "classical") for k in (1, 2)}
    assert {r.ways for r in by_entry["imagenet_a"]} == {200}
    assert {r.ways for r in by_entry["imagenetv2"]} == {4}
    assert all(r.coop_dataset == "ImageNetA" for r in by_entry["imagenet_a"])
    trained = [r for r in by_entry["imagenet_a"] if r.method == "classical"]
    assert all(r.train_steps == 2 for r in trained)  # scored with the run's trained weights
    # the variants' rows lost: a rerun trains again and writes exactly them, the same numbers
    kept = [r for r in rows if r.experiment_dataset == "imagenet"]
    results.write_text("".join(json.dumps(r.to_json()) + "\n" for r in kept))
    assert main(["experiment", str(config), "--out", str(out), "--quiet"]) == 0
    again = [Row.from_json(json.loads(x)) for x in results.read_text().splitlines()]
    assert len(again) == len(rows)

    def scores(rs):
        return sorted((r.experiment_dataset, r.method, r.shots, r.acc_mean)
                      for r in rs)

    assert scores(again) == scores(rows)


def test_runs_of_must_name_a_training_entry_and_hold_only_a_root(tmp_path):
    for text, message in (
            (VARIANTS.replace("runs_of: imagenet\n", "runs_of: nowhere\n", 1),
             "'runs_of' must name a dataset entry that trains"),
            (VARIANTS.replace("    runs_of: imagenet\n", "    runs_of: imagenet\n    ways: 3\n",
                              1), "an entry with 'runs_of' holds only its 'root'")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(MamfError, match=message):
            load_experiment(bad)
