"""Task samplers: valid tasks from their split only, determinism, what each rule prefers, the
confusion potentials on a hand-worked example, and the samplers axis of experiments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from mamf.config import build_config
from mamf.data.dataset import Pool
from mamf.engine.checkpoint import Checkpointer
from mamf.engine.training import make_sampler, train, train_pool
from mamf.methods import create as create_method
from mamf.protocols.episodic import episodic_pool
from mamf.runs.experiment import load_experiment, parse_experiment, run_experiment
from mamf.runs.prepare import prepare
from mamf.system.errors import MamfError
from mamf.tasks import samplers
from mamf.tasks.task import sample_classes

ALL = samplers.names()


def _observe_something(sampler, chosen, rng):
    """Feed a learning sampler a random confusion table, as a training step would."""
    n = len(chosen)
    probs = rng.dirichlet(np.ones(n), size=n)
    sampler.observe(chosen, np.hstack([probs * 4, np.full((n, 1), 4.0)]))


@pytest.fixture(scope="module")
def episodic(shared_colour_folder):
    """The tiny model on the colour folder under the episodic protocol: disjoint class splits."""
    config = build_config(overrides={"model": "tiny-random-clip", "data.protocol": "episodic",
                                     "data.root": str(shared_colour_folder)})
    model, dataset, inputs = prepare(config)
    return config, model, dataset, inputs


@pytest.mark.parametrize("name", ALL)
def test_every_sampler_draws_valid_tasks_of_the_training_split_only(episodic, name):
    config, model, dataset, inputs = episodic
    config = build_config({"model": "tiny-random-clip", "data": {"protocol": "episodic"},
                           "train": {"sampler": name}})
    pool = train_pool(dataset, config)
    others = {int(c) for split in ("dev", "test")
              for c in episodic_pool(dataset, split, config.data.class_split).classes}
    assert others and not others & set(pool.classes.tolist())
    sampler = make_sampler(create_method("mamf", config), model, inputs, pool, config)
    sampler.set_total_draws(400)
    rng = np.random.default_rng(0)
    for k in range(400):
        ways = (2, 3, len(pool.classes))[k % 3]
        chosen = sampler.draw(rng, ways)
        assert chosen.dtype == np.int64 and list(chosen) == sorted(set(chosen.tolist()))
        assert len(chosen) == ways and chosen[0] >= 0 and chosen[-1] < len(pool.classes)
        assert not {int(c) for c in pool.classes[chosen]} & others
        if sampler.learns:
            _observe_something(sampler, chosen, rng)
    assert sampler.drawn == 400
    with pytest.raises(MamfError, match="more than the"):
        sampler.draw(rng, len(pool.classes) + 1)


def _fixed_pool(n_classes=12, clusters=3, seed=0):
    """Prompt embeddings in `clusters` tight groups: classes of one group are alike."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, 16))
    emb = centres[np.arange(n_classes) % clusters] + 0.3 * rng.normal(size=(n_classes, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Pool(np.arange(n_classes), tuple(np.arange(1) for _ in range(n_classes))), emb


def _sampler(name, **train):
    pool, emb = _fixed_pool()
    config = build_config({"train": {"sampler": name, **train}})
    return samplers.create(name, pool, config, lambda: emb), emb


@pytest.mark.parametrize("name", ALL)
def test_a_sampler_is_deterministic_given_the_seed(name):
    def draws(seed):
        sampler, _ = _sampler(name)
        sampler.set_total_draws(60)
        rng, out = np.random.default_rng(seed), []
        for _ in range(60):
            out.append(sampler.draw(rng, 4).tolist())
            if sampler.learns:
                _observe_something(sampler, out[-1], np.random.default_rng(len(out)))
        return out

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_uniform_draws_exactly_as_sample_classes():
    sampler, _ = _sampler("uniform")
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    for _ in range(50):
        assert np.array_equal(sampler.draw(a, 5), sample_classes(b, 12, 5))


def _mean_similarity(name, draws=3000, ways=3, **train):
    sampler, emb = _sampler(name, **train)
    sampler.set_total_draws(draws)
    rng = np.random.default_rng(1)
    return np.array([samplers.task_similarity(emb, sampler.draw(rng, ways))
                     for _ in range(draws)])


def test_similar_draws_more_alike_classes_than_uniform_and_diverse_less():
    uniform, similar, diverse = (_mean_similarity(n) for n in ("uniform", "similar", "diverse"))
    # 3000 tasks each: standard errors near 0.005; the gaps are tens of them
    assert similar.mean() > uniform.mean() + 0.2
    assert diverse.mean() < uniform.mean() - 0.1
    # the temperature sets how strongly: a hot similar sampler is nearly uniform
    hot = _mean_similarity("similar", sampler_tau=100.0)
    assert abs(hot.mean() - uniform.mean()) < 0.03


def test_the_curriculum_goes_from_dissimilar_to_similar_tasks():
    uniform = _mean_similarity("uniform").mean()
    thirds = [part.mean() for part in np.array_split(_mean_similarity("curriculum"), 3)]
    assert thirds[0] < uniform - 0.05 < uniform + 0.05 < thirds[2]
    assert thirds[0] < thirds[1] < thirds[2]


def test_the_curriculum_needs_the_number_of_draws():
    sampler, _ = _sampler("curriculum")
    with pytest.raises(MamfError, match="number of tasks"):
        sampler.draw(np.random.default_rng(0), 3)


def test_a_sampler_by_meaning_needs_prompt_embeddings():
    pool, _ = _fixed_pool()
    with pytest.raises(MamfError, match="prompt embeddings"):
        samplers.create("similar", pool, build_config(), None)


def _logits(*probabilities):
    """Rows of logits whose softmax is exactly the given (unnormalised) row."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float32))


def test_confusion_potentials_update_as_specified_on_a_hand_worked_example():
    """Task of pool positions [0, 2, 4] (global ids 10, 12, 14), discount 0.5, scale 2.

    Step 1 (the loss ranges over the task's 3 classes), softmax rows and labels:
      class 10: (0.6, 0.3, 0.1); class 12: (0.2, 0.7, 0.1) and (0.25, 0.25, 0.5);
      class 14: (0.1, 0.1, 0.8)
      v(10, 12) = (0.3 + 0.2 + 0.25) / 3 = 0.25     -> L = 0.5 * 0 + 2 * 0.25 = 0.5
      v(10, 14) = (0.1 + 0.1) / 2 = 0.1              -> L = 0.2
      v(12, 14) = (0.1 + 0.5 + 0.1) / 3 = 0.7 / 3    -> L = 1.4 / 3
    Step 2 (candidates=batch: the loss ranges over 12 and 14 only), rows:
      class 14: (0.25, 0.75); class 12: (0.75, 0.25)
      v(12, 14) = (0.25 + 0.25) / 2 = 0.25           -> L = 0.5 * 1.4 / 3 + 2 * 0.25
      class 10 has no image in the step: its pairs keep their potential.
    """
    pool = Pool(np.arange(10, 16), tuple(np.arange(1) for _ in range(6)))
    config = build_config({"train": {"sampler": "confusion", "sampler_discount": 0.5,
                                     "sampler_scale": 2.0}})
    sampler = samplers.create("confusion", pool, config)
    chosen = np.array([0, 2, 4])
    classes = pool.classes[chosen]

    step1 = sampler.recorder(classes)
    logits = _logits([6, 3, 1], [2, 7, 1], [1, 1, 2], [1, 1, 8])
    step1(logits[:2], torch.tensor([0, 1]), classes)  # two pieces, as DDP shares or chunks
    step1(logits[2:], torch.tensor([1, 2]), classes)
    table = step1.values()
    assert table[:, 3].tolist() == [1, 2, 1]
    assert table[1, :3] == pytest.approx([0.45, 0.95, 0.6], abs=1e-6)
    sampler.observe(chosen, table)
    L = sampler.log_potential
    assert L[0, 2] == L[2, 0] == pytest.approx(0.5, abs=1e-6)
    assert L[0, 4] == pytest.approx(0.2, abs=1e-6)
    assert L[2, 4] == pytest.approx(1.4 / 3, abs=1e-6)
    assert np.count_nonzero(L) == 6  # three pairs, symmetric; nothing else moved

    step2 = sampler.recorder(classes)
    step2(_logits([1, 3], [3, 1]), torch.tensor([1, 0]), classes[1:])
    sampler.observe(chosen, step2.values())
    assert L[2, 4] == pytest.approx(0.7 / 3 + 0.5, abs=1e-6)
    assert L[0, 2] == pytest.approx(0.5, abs=1e-6) and L[0, 4] == pytest.approx(0.2, abs=1e-6)

    # the state holds only what left the prior, and restores exactly
    state = json.loads(json.dumps(sampler.state_dict()))
    assert len(state["log_potential"]) == 3
    again = samplers.create("confusion", pool, config)
    again.load_state_dict(state)
    assert np.array_equal(again.log_potential, L)


def test_confusion_draws_a_pair_by_its_potential_then_by_the_product(monkeypatch):
    """First pair (a, b) with weight C(a, b) = exp(L): a by its row's sum of C, then b by
    C(a, b); next class c with weight prod over chosen s of C(c, s) = exp(sum of L(c, s));
    chosen classes never again."""
    pool = Pool(np.arange(6), tuple(np.arange(1) for _ in range(6)))
    sampler = samplers.create("confusion", pool, build_config({"train": {"sampler": "confusion"}}))
    sampler.load_state_dict({"log_potential": [[0, 2, 0.5], [0, 4, 0.2], [2, 4, 0.7]]})
    seen, answers = [], iter([2, 4, 0])  # class 2, its partner 4, then class 0

    def fake_pick(rng, weights):
        seen.append(weights / weights[1])  # relative to class 1, whose potentials are all 1
        return next(answers)

    monkeypatch.setattr(samplers, "pick", fake_pick)
    assert sampler.draw(np.random.default_rng(0), 3).tolist() == [0, 2, 4]
    rows, partner, nxt = seen
    e = math.exp
    assert rows * 5 == pytest.approx([3 + e(0.5) + e(0.2), 5, 3 + e(0.5) + e(0.7),
                                      5, 3 + e(0.2) + e(0.7), 5])
    assert partner == pytest.approx([e(0.5), 1, 0, 1, e(0.7), 1])
    # after (2, 4): class 0 has L(0, 2) + L(0, 4) = 0.7; classes 1, 3, 5 have 0
    assert nxt == pytest.approx([e(0.7), 1, 0, 1, 0, 1])


def test_confusion_draws_pairs_in_proportion_to_their_potential():
    """Over many draws of 2-way tasks, a pair of potential C is drawn C times as often as a
    pair of potential 1 (the two-stage draw is the pair draw)."""
    pool = Pool(np.arange(4), tuple(np.arange(1) for _ in range(4)))
    sampler = samplers.create("confusion", pool, build_config({"train": {"sampler": "confusion"}}))
    sampler.load_state_dict({"log_potential": [[0, 1, math.log(3.0)]]})
    rng = np.random.default_rng(0)
    counts = {}
    for _ in range(16000):
        key = tuple(sampler.draw(rng, 2).tolist())
        counts[key] = counts.get(key, 0) + 1
    # weights: pair (0, 1) 3, the five others 1 -> probabilities 3/8 and 1/8
    assert counts[(0, 1)] / 16000 == pytest.approx(3 / 8, abs=0.012)
    for key in [(0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
        assert counts[key] / 16000 == pytest.approx(1 / 8, abs=0.01)


def test_confusion_learns_from_training_and_its_potentials_go_into_checkpoints(
        shared_colour_folder, tmp_path):
    config = build_config(overrides={"model": "tiny-random-clip", "train.method": "mamf",
                                     "train.sampler": "confusion", "train.steps": 3,
                                     "train.lr": 1e-3, "train.batch_size": 8, "data.ways": 3,
                                     "data.root": str(shared_colour_folder)})
    model, dataset, inputs = prepare(config, fresh=True)
    train(model, inputs, dataset, config, progress=False,
          checkpointer=Checkpointer(tmp_path, every=3))
    name = json.loads((tmp_path / "latest.json").read_text())["checkpoint"]
    state = json.loads((tmp_path / name / "state.json").read_text())["stream_state"]["sampler"]
    assert state["drawn"] == 3
    pairs = state["log_potential"]
    # 3 tasks of 3 classes touch at most 9 pairs; a softmax confusion is positive
    assert 3 <= len(pairs) <= 9 and all(v > 0 for _, _, v in pairs)


@pytest.mark.parametrize("key, value, message", [
    ("train.sampler_tau", 0, "positive"),
    ("train.sampler_discount", 1.5, "at most 1"),
    ("train.sampler_discount", -0.1, "must not be negative"),
    ("train.sampler_scale", -1, "must not be negative"),
])
def test_sampler_settings_are_checked(key, value, message):
    with pytest.raises(MamfError, match=message):
        build_config(overrides={key: value})


def test_task_similarity_is_the_mean_pairwise_prompt_cosine():
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [math.sqrt(0.5), math.sqrt(0.5)]])
    assert samplers.task_similarity(emb, [0, 1]) == pytest.approx(0.0)
    assert samplers.task_similarity(emb, [0, 1, 2]) == pytest.approx(2 * math.sqrt(0.5) / 3)


def _experiment(tmp_path, folder, **extra):
    raw = {"name": "samplers", "model": "tiny-random-clip", "methods": ["classical", "mamf"],
           "samplers": ["uniform", "similar", "confusion"], "seeds": [1],
           "settings": {"train": {"lr": 1e-3, "steps": 3, "batch_size": 8, "augment": False},
                        "metatest": {"epochs": 1, "lr": 1e-3}},
           "datasets": {"colours": {"root": str(folder), "ways": [2, 3]}}, **extra}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_an_experiment_runs_the_samplers_axis_and_reports_it(tmp_path, colour_folder):
    exp = load_experiment(_experiment(tmp_path, colour_folder))
    out = tmp_path / "out"
    rows = run_experiment(exp, out, progress=False)
    keys = sorted((r.method, str(r.sampler), r.ways) for r in rows)
    assert keys == sorted([("classical", "None", 2), ("classical", "None", 3)]
                          + [("mamf", s, n) for s in ("uniform", "similar", "confusion")
                             for n in (2, 3)])
    # every row of one task size met the same test tasks and measured them the same way
    for n in (2, 3):
        same = [r for r in rows if r.ways == n]
        assert len({json.dumps(r.task_similarity) for r in same}) == 1
        assert len(same[0].task_similarity) == same[0].n_tasks
    assert run_experiment(exp, out, progress=False) == rows  # the row key holds the sampler

    from mamf.report import write_report

    text = write_report(rows, tmp_path / "report")["md"].read_text()
    assert "## Samplers against uniform" in text
    assert "| colours | MAMF | similar |" in text and "| colours | MAMF | confusion |" in text
    assert "accuracy by test-task difficulty" in text and "similar (hard)" in text


@pytest.mark.parametrize("samplers_value, message", [
    (["uniform", "uniform"], "lists .uniform. twice"),
    (["uniform", "nearest"], "unknown task sampler"),
    ([], "non-empty list"),
])
def test_a_bad_samplers_axis_is_refused(samplers_value, message):
    raw = {"samplers": samplers_value, "datasets": {"a": {"root": "x"}}}
    with pytest.raises(MamfError, match=message):
        parse_experiment(raw)


def _row(method, sampler="absent", accs=(1.0, 0.0), sims=(0.1, 0.9), seed=1):
    row = {"dataset": "d", "method": method, "model": "m", "protocol": "paper", "ways": 2,
           "shots": 1, "queries": 1, "seed": seed, "split": "test", "n_tasks": len(accs),
           "task_accs": list(accs), "task_similarity": list(sims)}
    if sampler != "absent":
        row["sampler"] = sampler
    return row


def test_rows_from_before_samplers_read_as_uniform_for_methods_that_draw_tasks():
    from mamf.results import grid_key, row_sampler

    def key(*args):
        return grid_key(_row(*args))

    assert row_sampler(_row("mamf")) == "uniform" and row_sampler(_row("classical")) is None
    assert key("mamf") == key("mamf", "uniform")
    assert key("mamf", "similar") != key("mamf", "uniform")


def test_samplers_against_uniform_pairs_task_by_task():
    from mamf.report.samplers import against_uniform, by_tertile, tertile_bounds
    from mamf.report.selection import uniform_sampling
    from mamf.results import Row

    rows = [Row.from_json(r) for r in (
        _row("mamf", "uniform", accs=(0.5, 0.5, 0.5), sims=(0.1, 0.5, 0.9)),
        _row("mamf", "similar", accs=(0.4, 0.5, 0.8), sims=(0.1, 0.5, 0.9)),
        _row("classical", None, accs=(0.2, 0.2, 0.2), sims=(0.1, 0.5, 0.9)))]
    result = against_uniform(rows)
    assert list(result) == [("d", "mamf", "similar")]
    c = result[("d", "mamf", "similar")]
    assert c["pairs"] == 3 and c["mean"] == pytest.approx(0.2 / 3)
    # one seed: differences -0.1, 0, 0.3, sample std 0.2082, t(2) 4.303 * 0.2082 / sqrt(3)
    assert c["ci95"] == pytest.approx(0.51711, abs=1e-4) and c["verdict"] == "inconclusive"
    assert c["seeds"] == 1 and c["estimate"].one_run
    assert [r.method for r in uniform_sampling(rows)] == ["mamf", "classical"]
    bounds = tertile_bounds(rows, "d")
    cells = by_tertile(rows, "d", bounds)[("mamf", "similar")]
    assert cells["accs"] == [{1: [0.4]}, {1: [0.5]}, {1: [0.8]}]
    assert cells["diffs"] == [{1: pytest.approx([-0.1])}, {1: [0.0]}, {1: pytest.approx([0.3])}]
