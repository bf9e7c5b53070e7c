"""Training budgets (docs/method.md, "Budgets"): the exact updates and images of every method and
schedule, native and matched, on tiny pools; and what rows and the report say of them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import make_folder

from mamf import methods
from mamf.config import build_config
from mamf.engine.training import make_sampler, train, train_pool
from mamf.methods.budget import Budget
from mamf.methods.finetune import EpochStream
from mamf.results import Row
from mamf.runs.prepare import prepare
from mamf.tasks.task import number_of_tasks

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True, "train.augment": False, "train.lr": 1e-3,
          "train.epochs": 2, "train.batch_size": 8, "train.inner_lr": 0.01}
EMOJI = {"data.protocol": "episodic", "data.shots": 1, "data.queries": 1,
         "train.batch_size": 16}


@pytest.fixture(scope="module")
def paper_folder(tmp_path_factory):
    """10 classes of 10 images: the paper protocol's training split holds 6 of each (60)."""
    return make_folder(tmp_path_factory.mktemp("budget") / "paper", n_classes=10, per_class=10)


@pytest.fixture(scope="module")
def emoji_folder(tmp_path_factory):
    """Emoji-like: 12 classes of 2 images, episodic (a 5-way task holds 10 images)."""
    return make_folder(tmp_path_factory.mktemp("budget") / "emoji", n_classes=12, per_class=2)


def run(folder, **over):
    config = build_config(overrides={**FROZEN, "data.root": str(folder), **over})
    model, dataset, inputs = prepare(config)
    return train(model, inputs, dataset, config, progress=False), config, dataset


def classical_sizes(steps: int, images: int, batch: int) -> list[int]:
    """Classical fine-tuning's minibatch sizes, written out: full batches, each pass's last one
    holding the rest."""
    per_pass = [batch] * (images // batch) + ([images % batch] if images % batch else [])
    return [per_pass[i % len(per_pass)] for i in range(steps)]


def test_the_budget_is_classicals_schedule(paper_folder):
    result, config, dataset = run(paper_folder, **{"train.method": "classical"})
    pool = train_pool(dataset, config)
    budget = Budget(pool, config.train)
    images, labels = pool.all_images()
    stream = EpochStream(np.random.default_rng(0), images, labels, pool.classes, 8)
    taken = [len(next(stream).images) for _ in range(budget.steps)]
    assert taken == [budget.size(i) for i in range(budget.steps)] == classical_sizes(16, 60, 8)
    assert (result.steps, result.images) == (16, 120) == (budget.steps, budget.total())


# (method, schedule, ways, budget) -> (updates, images) on the paper pool: 10 classes of 6
# training images (P = 60), batch 8, 2 epochs: classical takes 16 steps (7 of 8, 1 of 4 a pass)
PAPER = [
    ("classical", "sampled", 2, "native", 16, 120),
    ("classical", "sampled", 2, "matched", 16, 120),
    ("mamf", "sampled", 2, "native", 16, 16 * 8),  # a 2-way task holds 12: 8 every step
    ("mamf", "sampled", 9, "native", 16, 16 * 8),
    ("mamf", "sampled", 2, "matched", 16, 120),
    ("mamf", "sampled", 9, "matched", 16, 120),
    # K(2, 10) = 31 tasks, 2 passes of 2 batches (8 + 4) each
    ("mamf", "sequential", 2, "native", 31 * 2 * 2, 31 * 2 * 12),
    ("mamf", "sequential", 9, "native", 3 * 2 * 7, 3 * 2 * 54),  # 54 images: 7 batches a pass
    ("mamf", "sequential", 2, "matched", 16, 120),
    ("mamf", "sequential", 9, "matched", 16, 120),
    # native FOMAML: ceil(2 * 60 / (60 * n / 10)) tasks of 6n images, one per step
    ("fomaml", "sampled", 2, "native", 10, 10 * 12),
    ("fomaml", "sampled", 9, "native", 3, 3 * 54),
    ("fomaml", "sampled", 2, "matched", 16, 120),  # a task cut to each step's 8 (or 4) images
    # a 9-way task keeps one support and one query image a class: 18 a step, over 8
    ("fomaml", "sampled", 9, "matched", 16, 16 * 18),
]


@pytest.mark.parametrize("method, schedule, ways, budget, steps, images", PAPER)
def test_updates_and_images_on_the_paper_pool(paper_folder, method, schedule, ways, budget,
                                              steps, images):
    result, _, _ = run(paper_folder, **{"train.method": method, "train.schedule": schedule,
                                        "data.ways": ways, "train.budget": budget})
    assert (result.steps, result.images, result.budget) == (steps, images, budget)


def test_matched_sequential_shares_the_updates_among_the_tasks(paper_folder):
    """K(9, 10) = 3 tasks get 6, 5 and 5 of the 16 updates, each with a fresh optimiser."""
    config = build_config(overrides={**FROZEN, "data.root": str(paper_folder), "data.ways": 9,
                                     "train.method": "mamf", "train.schedule": "sequential",
                                     "train.budget": "matched"})
    model, dataset, inputs = prepare(config)
    method, pool = methods.create("mamf", config), train_pool(dataset, config)
    sampler = make_sampler(method, model, inputs, pool, config)
    method.begin(model, inputs, pool, np.random.default_rng(0), sampler)
    firsts, sizes = [], []
    for i in range(method.steps):
        batch = method.stream.take(i)[0]
        firsts += [i] if batch.new_task else []
        sizes.append(len(batch.images))
    assert number_of_tasks(9, 10) == 3 and firsts == [0, 6, 11]
    assert sizes == classical_sizes(16, 60, 8)
    with pytest.raises(StopIteration):
        method.stream.take(16)


def emoji_pool_images(folder) -> int:
    config = build_config(overrides={**FROZEN, **EMOJI, "data.root": str(folder)})
    _, dataset, _ = prepare(config)
    pool = train_pool(dataset, config)
    assert all(len(x) == 2 for x in pool.images)
    return sum(len(x) for x in pool.images)


def test_updates_and_images_on_emoji_like_classes_of_two(emoji_folder):
    """A 5-way task of 2-image classes holds 10 images, under classical's batch of 16."""
    P = emoji_pool_images(emoji_folder)
    steps = 2 * math.ceil(P / 16)
    expect = {
        ("classical", "native"): (steps, 2 * P),
        ("mamf", "native"): (steps, steps * 10),  # one task a step: 10 images, not 16
        ("mamf", "matched"): (steps, 2 * P),  # a step filled with a second task
        ("fomaml", "native"): (math.ceil(2 * P / 10), math.ceil(2 * P / 10) * 10),
    }
    for (method, budget), counts in expect.items():
        result, _, _ = run(emoji_folder, **EMOJI, **{"train.method": method,
                                                     "train.budget": budget})
        assert (result.steps, result.images) == counts, (method, budget)
    # matched FOMAML: whole tasks (2 images a class at least) keep within half a task of it
    result, _, _ = run(emoji_folder, **EMOJI, **{"train.method": "fomaml",
                                                 "train.budget": "matched"})
    assert result.steps == steps and abs(result.images - 2 * P) <= 5


def test_a_matched_mamf_step_holds_classicals_images(emoji_folder):
    config = build_config(overrides={**FROZEN, **EMOJI, "data.root": str(emoji_folder),
                                     "train.method": "mamf", "train.budget": "matched"})
    model, dataset, inputs = prepare(config)
    method, pool = methods.create("mamf", config), train_pool(dataset, config)
    method.begin(model, inputs, pool, np.random.default_rng(1),
                 make_sampler(method, model, inputs, pool, config))
    P = sum(len(x) for x in pool.images)
    for i, size in enumerate(classical_sizes(method.steps, P, 16)):
        batches = method.stream.take(i)
        assert sum(len(b.images) for b in batches) == size
        assert len(batches) == math.ceil(size / 10)  # whole 10-image tasks, the last cut
        for b in batches:  # each task's images are its own classes', without repeats
            assert len(set(b.images.tolist())) == len(b.images)
            assert all(img in dataset.class_images[b.classes[label]]
                       for img, label in zip(b.images, b.labels))


def test_experiment_rows_record_a_matched_budget_and_the_report_shows_it(tmp_path, paper_folder):
    from mamf.report import training_line
    from mamf.runs.experiment import parse_experiment, run_experiment

    raw = {"name": "budgets", "model": "tiny-random-clip",
           "methods": ["zeroshot", "classical", "mamf", "fomaml"], "seeds": [1],
           "settings": {"train": {k.split(".")[1]: v for k, v in FROZEN.items()
                                  if k.startswith("train.")},
                        "metatest": {"epochs": 1}, "data": {"tasks": 3}},
           "datasets": {"p": {"root": str(paper_folder), "ways": [9]}}}
    rows = run_experiment(parse_experiment(raw), tmp_path / "out", progress=False)
    trained = {r.method: (r.train_steps, r.train_images, r.train_budget)
               for r in rows if r.method != "zeroshot"}
    assert trained == {"classical": (16, 120, "matched"), "mamf": (16, 120, "matched"),
                       "fomaml": (16, 16 * 18, "matched")}
    assert "train_steps" not in next(r for r in rows if r.method == "zeroshot").to_json()
    line = training_line(rows)
    assert line == ("p: classical FT 16 updates and 120 images (matched), MAMF 16 updates and "
                    "120 images (matched), FOMAML 16 updates and 288 images (matched)")
    # rows written before budgets: steps at most, no images, no budget: said, not guessed
    old = training_line([Row.from_json({k: v for k, v in r.to_json().items()
                                        if k not in ("train_images", "train_budget")})
                         for r in rows])
    assert "classical FT 16 updates and images not recorded (native*)" in old
    assert old.endswith("trained on each method's native schedule; their images are unknown)")


def test_train_json_and_rows_scored_from_the_run_folder_record_the_budget(tmp_path,
                                                                          paper_folder):
    from mamf.cli import main

    run = tmp_path / "run"
    flags = ["--set", "train.freeze_image_backbone=true", "--set", "train.freeze_text_tower=true",
             "--set", "train.augment=false", "--set", "train.batch_size=8", "--set",
             "train.epochs=2", "--quiet"]
    assert main(["train", "--method", "fomaml", "--model", "tiny-random-clip", "--data",
                 str(paper_folder), "--out", str(run), "--ways", "2", *flags]) == 0
    summary = json.loads((run / "train.json").read_text())
    assert (summary["steps"], summary["images"], summary["budget"]) == (10, 120, "native")
    assert main(["evaluate", "--run", str(run), "--data", str(paper_folder), "--out",
                 str(tmp_path / "eval"), "--ways", "2", "--quiet"]) == 0
    row = json.loads((tmp_path / "eval" / "results.jsonl").read_text().splitlines()[0])
    assert (row["train_steps"], row["train_images"], row["train_budget"]) == (10, 120, "native")


class Stop(Exception):
    pass


@pytest.mark.parametrize("method, schedule, emoji", [("mamf", "sampled", True),
                                                     ("mamf", "sequential", False),
                                                     ("fomaml", "sampled", True)])
def test_a_matched_run_resumes_to_the_same_losses_and_images(tmp_path, paper_folder,
                                                             emoji_folder, monkeypatch, method,
                                                             schedule, emoji):
    from mamf.engine.checkpoint import Checkpointer

    over = {**(EMOJI if emoji else {"data.ways": 3}), "train.method": method,
            "train.schedule": schedule, "train.budget": "matched", "train.epochs": 8}
    folder = emoji_folder if emoji else paper_folder
    whole, _, _ = run(folder, **over)

    def fresh():
        config = build_config(overrides={**FROZEN, "data.root": str(folder), **over})
        return (config, *prepare(config))

    cls = type(methods.create(method, fresh()[0]))
    real = cls.step

    def stopping(self, i):
        if i == 3:
            raise Stop
        return real(self, i)

    monkeypatch.setattr(cls, "step", stopping)
    config, model, dataset, inputs = fresh()
    with pytest.raises(Stop):
        train(model, inputs, dataset, config, False, Checkpointer(tmp_path / "ck", 2))
    monkeypatch.setattr(cls, "step", real)
    config, model, dataset, inputs = fresh()
    resumed = train(model, inputs, dataset, config, False, Checkpointer(tmp_path / "ck", 2))
    assert (resumed.losses, resumed.images) == (whole.losses, whole.images)
