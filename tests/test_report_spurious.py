"""The report's spurious-feature section: rho read from the experiment (or the data folder's own
record), one sweep per capacity, MAMF - classical per rho and the shortcut's cost by seed."""

from __future__ import annotations

import json

import pytest
import yaml

from mamf.report import write_report
from mamf.report.spurious import shortcut_strengths, sweeps
from mamf.results import Row

SEEDS = (312, 313, 314)
RHOS = (0.1, 0.5, 1.0)


def row(dataset: str, method: str, seed: int, acc: float, params: int, **over) -> Row:
    # 10 tasks: `acc` with a small task-to-task pattern that is the same for every method, so
    # the paired differences are exact and the intervals come from the seeds
    accs = [acc + d for d in (-0.02, 0.02) * 5]
    return Row.from_json({
        "method": method, "model": "effnet-minilm", "dataset": dataset,
        "experiment_dataset": dataset, "protocol": "paper", "ways": 5, "shots": 10,
        "queries": 10, "seed": seed, "split": "test", "n_tasks": 10,
        "acc_mean": sum(accs) / 10, "acc_ci95": 0.0, "task_accs": accs, "time_s": 1.0,
        "host": "vm", "run": None, "trainable_params": None if method == "zeroshot" else params,
        **over})


def grid() -> list[Row]:
    """Classical loses 0.2 x rho, MAMF 0.05 x rho on the small head; on the big one classical
    loses 0.4 x rho and MAMF 0.1 x rho. Seeds shift everything alike (by 0.01 a seed)."""
    rows = []
    for capacity, params, slope in (("frozen", 1000, 0.2), ("block", 200000, 0.4)):
        for rho in RHOS:
            name = f"rho-{rho}-{capacity}"
            for i, seed in enumerate(SEEDS):
                jitter = 0.01 * i + 0.003 * i * rho  # the cost varies a little by seed
                rows += [row(name, "zeroshot", seed, 0.3, params),
                         row(name, "classical", seed, 0.9 - slope * rho + jitter, params),
                         row(name, "mamf", seed, 0.9 - slope / 4 * rho + jitter, params)]
    return rows


def experiment(folder, rows):
    names = sorted({r.dataset for r in rows})
    datasets = {n: {"build": "spurious", "build_options": {"rho": float(n.split("-")[1])},
                    "ways": [5]} for n in names}
    (folder / "experiment.yaml").write_text(yaml.safe_dump(
        {"name": "spurious-test", "model": "effnet-minilm", "seeds": list(SEEDS),
         "methods": ["zeroshot", "classical", "mamf"], "datasets": datasets}))


def test_rho_comes_from_the_experiment_and_sweeps_split_by_capacity(tmp_path):
    rows = grid()
    experiment(tmp_path, rows)
    strengths = shortcut_strengths(rows, tmp_path)
    assert strengths == {f"rho-{r}-{c}": r for r in RHOS for c in ("frozen", "block")}
    found = sweeps(rows, strengths)
    assert [s.capacity for s in found] == [1000, 200000]
    small, big = found
    assert small.rhos == list(RHOS) and small.datasets == [f"rho-{r}-frozen" for r in RHOS]
    # MAMF - classical at rho 1.0 on the small head: 0.2 - 0.05 = 0.15, the same for every seed
    assert small.gap["rho-1.0-frozen"].mean == pytest.approx(0.15)
    assert small.gap["rho-0.1-frozen"].mean == pytest.approx(0.015)
    # the shortcut's cost from rho 0.1 to 1.0: classical -0.2 x 0.9, MAMF a quarter of that,
    # plus the seeds' 0.003 x i x 0.9 (mean over i = 0, 1, 2: 0.0027)
    assert small.cost["classical"].mean == pytest.approx(-0.18 + 0.0027)
    assert small.cost["mamf"].mean == pytest.approx(-0.045 + 0.0027)
    assert small.cost_gap.mean == pytest.approx(0.135)
    assert small.cost_gap.seeds == 3
    assert big.cost_gap.mean == pytest.approx(0.27)


def test_the_section_and_its_figure_are_in_the_report(tmp_path):
    rows = grid()
    experiment(tmp_path, rows)
    files = write_report(rows, tmp_path, "spurious")
    text = (tmp_path / "report.md").read_text()
    assert "## Claim 1's mechanism: a spurious feature of known strength" in text
    assert "| 0.20 M | 0.1 → 1 | -0.357 ± " in text  # classical: -0.4 x 0.9 + 0.0027
    assert "(figures/spurious.png)" in text and files["spurious"].is_file()
    # two sweeps' costs, each exactly the seeds' 0.135 / 0.27 apart: both "holds" after Holm
    cost_rows = [line for line in text.splitlines() if " → 1 |" in line]
    assert len(cost_rows) == 2 and all(line.endswith("| holds |") for line in cost_rows)


def test_rho_from_the_data_folders_record_without_an_experiment(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".mamf-dataset.json").write_text(json.dumps({"builder": "spurious", "rho": 0.8}))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "abc.yaml").write_text(yaml.safe_dump({"data": {"root": str(data)}}))
    rows = [row("shapes", "classical", 312, 0.9, 10, config_id="abc"),
            row("other", "classical", 312, 0.9, 10, config_id="missing")]
    assert shortcut_strengths(rows, tmp_path) == {"shapes": 0.8}


def test_no_section_without_two_strengths(tmp_path):
    rows = [r for r in grid() if r.dataset == "rho-0.5-frozen"]
    experiment(tmp_path, rows)
    assert sweeps(rows, shortcut_strengths(rows, tmp_path)) == []
    write_report(rows, tmp_path, "one rho")
    assert "spurious feature" not in (tmp_path / "report.md").read_text()


def test_rho_is_read_from_the_entries_alone(tmp_path):
    """The report reads the file's dataset entries without checking it against the plug-ins
    (which would load torch): settings for a method registered only where the study ran (a
    user's plug-in) do not hide the strengths; an entry that is not one still does."""
    rows = grid()
    experiment(tmp_path, rows)
    raw = yaml.safe_load((tmp_path / "experiment.yaml").read_text())
    raw["methods"].append("my-plugin")
    raw["method_settings"] = {"my-plugin": {"train": {"lr": 0.1}}}
    raw["datasets"]["rho-0.5-block"]["method_settings"] = {"my-plugin": {"train": {"lr": 0.2}}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(raw))
    assert shortcut_strengths(rows, tmp_path) == {f"rho-{r}-{c}": r for r in RHOS
                                                  for c in ("frozen", "block")}
    raw["datasets"]["rho-0.1-frozen"]["ways"] = "seven"
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(raw))
    assert shortcut_strengths(rows, tmp_path) == {}
