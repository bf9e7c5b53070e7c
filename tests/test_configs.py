"""The shipped experiment configs parse and expand (paper-clip cannot run here: no weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mamf.runs.experiment import load_experiment, run_config
from mamf.runs.ways import ways_list
from mamf.tasks.task import number_of_tasks

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "configs" / n for n in ("paper-clip.yaml", "paper-offline.yaml", "quick.yaml",
                                         "samplers-offline.yaml")]
SHIPPED.append(ROOT / "src" / "mamf" / "configs" / "demo.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    exp = load_experiment(path)
    for ds in exp.datasets:
        for method in exp.methods:
            config = run_config(exp, ds, method, exp.seeds[0], "/data")
            assert config.model == exp.model


def test_paper_clip_expands_to_the_papers_grid():
    exp = load_experiment(ROOT / "configs" / "paper-clip.yaml")
    assert exp.model == "openai/clip-vit-base-patch32"
    assert exp.seeds == [312, 313, 314, 315, 316]
    assert [d.name for d in exp.datasets] == ["clevr-counting", "abo-material", "cub", "fungi",
                                              "mini-imagenet"]
    by_name = {d.name: d for d in exp.datasets}
    fungi = run_config(exp, by_name["fungi"], "mamf", 312, "/data")
    assert fungi.data.start_n == 10 and fungi.train.lr == 1e-6 and fungi.metatest.lr == 1e-7
    assert ways_list(fungi, 25, by_name["fungi"].ways) == list(range(10, 25))
    cub = run_config(exp, by_name["cub"], "classical", 312, "/data")
    assert cub.train.batch_size == 16
    counting = run_config(exp, by_name["clevr-counting"], "fomaml", 312, "/data")
    assert counting.data.template == "An image of {label} objects"
    tasks = sum(number_of_tasks(n, 10) for n in ways_list(counting, 10, "paper"))
    assert tasks == 31 + 19 + 14 + 10 + 8 + 6 + 4 + 3


def test_the_samplers_study_runs_every_sampler_for_the_methods_that_draw_tasks():
    from mamf.runs.experiment import samplers_of

    exp = load_experiment(ROOT / "configs" / "samplers-offline.yaml")
    assert len(exp.seeds) >= 3 and exp.samplers == ["uniform", "similar", "diverse",
                                                  "curriculum", "confusion"]
    for ds in exp.datasets:
        assert samplers_of(exp, ds, "mamf") == exp.samplers == samplers_of(exp, ds, "fomaml")
        assert samplers_of(exp, ds, "zeroshot") == [None]
