"""Evidence fixed before the numbers (issue 40): hypotheses declared in the experiment file and
tested first, Holm over them; caveats written from the files; symmetric tuning by default; a
re-tune after test rows exist refused unless the file says why, then for every method."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import make_folder

from mamf import stats
from mamf.engine.chance import collapsed
from mamf.report.caveats import chance_lines, edges, margin, tuning_lines
from mamf.report.hypotheses import declared_tests, hypotheses_section
from mamf.results import Row
from mamf.runs.experiment import parse_experiment, run_experiment
from mamf.runs.hypotheses import digest, parse_hypotheses
from mamf.runs.tune import TUNE_FILE, choose, collapsed_seeds, tune_experiment
from mamf.system.errors import MamfError

METHODS = ["zeroshot", "classical", "mamf", "fomaml"]
LEVELS = ["a", "b", "c"]


def row(method, dataset, seed, accs, **over):
    r = {"method": method, "model": "m", "dataset": dataset, "protocol": "episodic", "ways": 5,
         "shots": 1, "queries": 1, "seed": seed, "split": "test", "n_tasks": len(accs),
         "acc_mean": float(np.mean(accs)), "acc_ci95": 0.0, "task_accs": list(accs),
         "time_s": 1.0, "host": "vm", "run": None}
    r.update(over)
    return Row.from_json(r)


def test_hypotheses_are_checked_and_their_hash_changes_when_one_is_added():
    raw = {"c2": {"compare": ["mamf", "fomaml"], "expect": "falls", "along": "zeroshot"}}
    one = parse_hypotheses(raw, METHODS, LEVELS)
    two = parse_hypotheses({**raw, "c1": {"compare": ["mamf", "classical"],
                                           "expect": "greater"}}, METHODS, LEVELS)
    assert digest(one) == digest(parse_hypotheses(dict(raw), METHODS, LEVELS))
    assert digest(one) != digest(two) and digest([]) is None
    bad = [({"x": {"compare": ["mamf", "nope"], "expect": "greater"}}, "two of the experiment"),
           ({"x": {"compare": ["mamf", "fomaml"], "expect": "bigger"}}, "expect must be"),
           ({"x": {"compare": ["mamf", "fomaml"], "expect": "falls"}}, "need 'along'"),
           ({"x": {"compare": ["mamf", "fomaml"], "expect": "greater", "along": "zeroshot"}},
            "need 'along'"),
           ({"x": {"compare": ["mamf", "fomaml"], "expect": "falls", "along": "nope"}},
            "along must name a method"),
           ({"x": {"compare": ["mamf", "fomaml"], "expect": "falls", "along": "zeroshot",
                   "datasets": ["a", "b"]}}, "at least 3 datasets")]
    for h, match in bad:
        with pytest.raises(MamfError, match=match):
            parse_hypotheses(h, METHODS, LEVELS)


def test_the_slope_is_fitted_per_seed_then_t_over_seeds():
    xs = {"a": 0.2, "b": 0.4, "c": 0.6}
    # seed 1 falls by 0.2 per unit of x, seed 2 by 0.4: the mean slope is -0.3
    ys = {g: {1: [0.5 - 0.2 * x], 2: [0.5 - 0.4 * x]} for g, x in xs.items()}
    e = stats.slope(xs, ys)
    assert e.seeds == 2 and e.mean == pytest.approx(-0.3)
    assert e.ci95 == pytest.approx(stats.t_quantile(1) * np.std([-0.2, -0.4], ddof=1) / 2 ** .5)


def _levels(gap_by_level: dict[str, float], hash_: str | None):
    """Rows of three levels, 3 seeds: zero-shot rises, FOMAML = zero-shot + 0.3, MAMF = FOMAML
    + the level's gap (+ a seed's wobble), classical = MAMF - 0.01."""
    rows, rng = [], np.random.default_rng(0)
    for i, d in enumerate(LEVELS):
        for s in (1, 2, 3):
            z = 0.2 + 0.2 * i + rng.normal(0, 0.01, 10)
            f = z + 0.3
            m = f + gap_by_level[d] + 0.005 * s
            over = {"hypotheses_sha256": hash_} if hash_ else {}
            rows += [row("zeroshot", d, s, z, **over), row("fomaml", d, s, f, **over),
                     row("mamf", d, s, m, **over), row("classical", d, s, m - 0.01, **over)]
    return rows


def _file(tmp_path, hypotheses):
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(
        {"methods": METHODS, "datasets": {d: {} for d in LEVELS}, "hypotheses": hypotheses}))
    return digest(parse_hypotheses(hypotheses, METHODS, LEVELS))


def test_declared_hypotheses_are_tested_first_with_holm_and_their_provenance_checked(tmp_path):
    declared = {"trend": {"compare": ["mamf", "fomaml"], "expect": "falls", "along": "zeroshot"},
                "c1": {"compare": ["mamf", "classical"], "expect": "greater"}}
    sha = _file(tmp_path, declared)
    rows = _levels({"a": 0.06, "b": 0.03, "c": 0.0}, sha)
    found = declared_tests(rows, parse_hypotheses(declared, METHODS, LEVELS))
    assert [t.where for t in found] == ["a, b, c", "a", "b", "c"]  # one slope, one per level
    assert found[0].estimate.mean == pytest.approx(-0.06 / 0.4, rel=0.05)
    assert found[0].verdict == "holds"  # it falls, as declared
    # Holm over all four declared tests: the verdicts of the signed estimates, together
    assert [t.verdict for t in found] == stats.verdicts(
        [stats.Estimate(t.estimate.mean * t.hypothesis.sign, t.estimate.ci95, 3, 30, "seeds",
                        t.estimate.p, True) for t in found])
    text = "\n".join(hypotheses_section(rows, tmp_path))
    assert "**Declared in advance**" in text and sha[:12] in text
    assert "Holm-adjusted over the 4 tests declared" in text and "**exploratory**" in text
    # the gap rising instead: the declared fall does not hold
    rising = declared_tests(_levels({"a": 0.0, "b": 0.03, "c": 0.06}, sha),
                   parse_hypotheses(declared, METHODS, LEVELS))
    assert rising[0].verdict == "does not hold"
    # a hypothesis added after the rows: its hash is not the rows', and the section says so
    _file(tmp_path, {**declared, "late": {"compare": ["fomaml", "zeroshot"],
                                          "expect": "greater"}})
    text = "\n".join(hypotheses_section(rows, tmp_path))
    assert "**Not declared in advance**: 36 of 36 rows" in text and "(exploratory) |" in text
    assert "No hypotheses were declared" in hypotheses_section(rows, None)[2]


def test_caveats_name_edges_margins_seeds_and_collapses(tmp_path):
    grid = {"train.lr": [1e-4, 1e-3, 1e-2], "metatest.lr": [1e-5, 1e-4]}
    assert edges(grid, {"train.lr": 1e-2, "metatest.lr": 1e-5}) == ["train.lr top",
                                                                    "metatest.lr bottom"]
    assert edges(grid, {"train.lr": 1e-3, "metatest.lr": 1e-4}) == ["metatest.lr top"]
    scores = [{"train": {"train.lr": 1e-2}, "metatest": {}, "dev_acc": 0.9, "collapsed": [7]},
              {"train": {"train.lr": 1e-3}, "metatest": {}, "dev_acc": 0.8, "dev_tasks": 100,
               "dev_acc_by_seed": {"7": 0.79, "8": 0.81}},
              {"train": {"train.lr": 1e-4}, "metatest": {}, "dev_acc": 0.797, "dev_tasks": 100},
              {"train": {"train.lr": 1e-5}, "metatest": {}, "dev_acc": None}]
    for s in scores:
        s["ways"] = [5]
    assert choose(scores)["dev_acc"] == 0.8  # the collapsed point is never chosen
    assert margin(scores) == pytest.approx(0.003)
    (tmp_path / TUNE_FILE).write_text(json.dumps({"seed": [7, 8], "entries": {"d/mamf": {
        "grid": {"train.lr": [1e-5, 1e-4, 1e-3, 1e-2]}, "scores": scores,
        "chosen": {"train.lr": 1e-3}}}}))
    text = "\n".join(tuning_lines(tmp_path))
    assert "| d/mamf | train.lr 1e-05..0.01 (4) | train.lr 0.001 | no | +0.003 | 100 | 2 (7, 8) " \
           "| 1 |" in text
    assert "0 of 1 entries chose a value on an edge of their grid; 1 won by 0.005" in text
    rows = [row("classical", "d", s, [0.2], train_steps=10, train_at_chance=s == 2)
            for s in (1, 2)] + [row("mamf", "d", 1, [0.2], train_steps=10)]  # old: by accuracy
    text = "\n".join(chance_lines(rows))
    assert "| classical FT | d | 5 | 2 | 2 |" in text and "| MAMF | d | 5 | 1 | 1 |" in text


def test_a_training_at_chance_at_every_test_time_rate_on_one_seed_is_never_chosen():
    # train.lr 1e-2 trains well on seed 7 and collapses on seed 8 (0.2 = 1/5 at every
    # test-time rate): its mean still beats 1e-3's, yet it is not chosen, for any method
    point = {"train": {"train.lr": 1e-2}, "ways": [5]}
    scores = [{**point, "metatest": {"metatest.lr": lr}, "dev_acc": (0.99 + acc) / 2,
               "dev_acc_by_seed": {"7": 0.99, "8": acc}} for lr, acc in ((1e-4, 0.2),
                                                                        (1e-3, 0.21))]
    scores.append({"train": {"train.lr": 1e-3}, "ways": [5], "metatest": {"metatest.lr": 1e-4},
                   "dev_acc": 0.55, "dev_acc_by_seed": {"7": 0.56, "8": 0.54}})
    assert collapsed_seeds(scores, {"train.lr": 1e-2}) == {"8"}
    assert collapsed_seeds(scores, {"train.lr": 1e-3}) == set()
    assert choose(scores)["train"] == {"train.lr": 1e-3}
    # a slow learner that adaptation lifts above chance at some rate is not a collapse
    scores[1]["dev_acc_by_seed"]["8"] = 0.5
    assert collapsed_seeds(scores, {"train.lr": 1e-2}) == set()


def test_a_collapse_is_a_fall_to_chance_not_a_run_that_never_learned():
    assert collapsed([1.0] * 5 + [1.7] * 5, 5)  # began below ln 5 = 1.61, ended at it
    assert not collapsed([1.7] * 10, 5)  # never left chance: did not learn
    assert not collapsed([1.0] * 10, 5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("evidence") / "colours", n_classes=6,
                       per_class=10)


def experiment(folder, **tune):
    return {"name": "evidence", "model": "tiny-random-clip",
            "methods": ["zeroshot", "classical", "mamf", "fomaml"], "seeds": [1],
            "hypotheses": {"c1": {"compare": ["mamf", "classical"], "expect": "greater"}},
            "settings": {"train": {"freeze_image_backbone": True, "freeze_text_tower": True,
                                   "augment": False, "epochs": 1, "batch_size": 16},
                         "metatest": {"epochs": 1}},
            "datasets": {"colours": {"root": str(folder), "ways": [3]}},
            "tune": {"seed": [0, 2], "grid": {"train.lr": [1e-2], "metatest.lr": [1e-3]},
                     "method_grid": {"fomaml": {"train.lr": [1e-2], "train.inner_lr": [1e-2],
                                                "metatest.inner_lr": [1e-2]}}, **tune}}


def test_tuning_is_symmetric_unless_the_file_says_why(folder):
    parse_experiment(experiment(folder))
    cases = [({"seed": 0}, "at least 2 tune seeds"),
             ({"methods": ["mamf", "fomaml"]}, "leaves out classical"),
             ({"method_grid": {"fomaml": {"train.lr": [1e-2], "metatest.inner_lr": [1e-2]}}},
              "fomaml's grid on colours lacks train.inner_lr"),
             ({"grid": {"train.lr": [1e-2]}}, "classical's grid on colours lacks metatest.lr")]
    for over, match in cases:
        with pytest.raises(MamfError, match=match):
            parse_experiment(experiment(folder, **over))
        parse_experiment(experiment(folder, **over, asymmetric="a test of the mechanics only"))
    with pytest.raises(MamfError, match="must say why"):
        parse_experiment(experiment(folder, seed=0, asymmetric="no"))
    # a file kept beside rows from before the rule still reads, for their report
    assert parse_experiment(experiment(folder, seed=0), strict=False).tune.seeds == [0]


def test_a_retune_after_rows_is_refused_unless_said_why_and_then_covers_every_method(
        tmp_path, folder):
    out = tmp_path / "out"
    exp = parse_experiment(experiment(folder))
    rows = run_experiment(exp, out, progress=False)
    assert {r.hypotheses_sha256 for r in rows} == {digest(exp.hypotheses)}
    trained = [r for r in rows if r.method != "zeroshot"]
    assert trained and all(r.train_at_chance is not None and r.train_collapsed is not None
                           for r in trained)
    first = json.loads((out / TUNE_FILE).read_text())
    assert all("dev_tasks" in s for e in first["entries"].values() for s in e["scores"])
    wider = {"train.lr": [1e-2, 1e-1], "metatest.lr": [1e-3]}
    with pytest.raises(MamfError, match="tuning again after its test rows exist is refused"):
        tune_experiment(parse_experiment(experiment(folder, grid=wider)), out)
    why = "the first grid's top was chosen everywhere"
    retuned = parse_experiment(experiment(folder, grid=wider, retune=why))
    tune_experiment(retuned, out)
    state = json.loads((out / TUNE_FILE).read_text())
    assert state["retune"] == why
    # every method's entry was tuned again, FOMAML's too though its grid did not change
    assert set(state["before_retune"][0]["entries"]) == set(state["entries"]) == \
        {"colours/classical", "colours/mamf", "colours/fomaml"}
    # the earlier rows cannot be mixed with the new tuning's (only if the choice changed)
    changed = any(state["entries"][k]["chosen"] != first["entries"][k]["chosen"]
                  for k in state["entries"])
    if changed:
        with pytest.raises(MamfError, match="tuned otherwise than"):
            run_experiment(retuned, out, progress=False)


def test_caveats_say_where_compared_methods_differ_in_updates_images_and_adaptation():
    from mamf.report.caveats import budget_lines

    rows = [row("zeroshot", "d", 1, [0.3]),
            row("classical", "d", 1, [0.8], train_steps=10, train_images=320),
            row("fomaml", "d", 1, [0.7], train_steps=4, train_images=320)]
    text = "\n".join(budget_lines(rows, None))
    # settings files are not there: the adaptation is "not recorded" for both, so not a difference
    assert "the methods differ in updates." in text and "classical FT: updates 10" in text
    assert "zero-shot" not in text  # it neither trains nor adapts, by design
    same = [r for r in rows if r.method != "fomaml"] + [
        row("mamf", "d", 1, [0.8], train_steps=10, train_images=320)]
    assert budget_lines(same, None) == []


def test_declared_tests_read_the_trained_weights_not_a_wiseft_mix():
    """An entry scored at WiSE-FT alphas 0, 0.5 and 1 (counting in expressive-matched-declared):
    at alpha 0 both methods are their starting weights and tie with no spread. The declared test
    read those rows (+0.000, *no spread*) where the claim-1 table read the trained ones."""
    declared = {"c1": {"compare": ["mamf", "classical"], "expect": "greater"}}
    rows = []
    for s in (1, 2, 3):
        for alpha, gap in ((0.0, 0.0), (0.5, 0.05), (1.0, 0.1 + 0.01 * s)):
            rows += [row("classical", "a", s, [0.5, 0.6], alpha=alpha),
                     row("mamf", "a", s, [0.5 + gap, 0.6 + gap], alpha=alpha)]
    found = declared_tests(rows, parse_hypotheses(declared, METHODS, LEVELS))
    assert [t.where for t in found] == ["a"]
    assert found[0].estimate.mean == pytest.approx(0.12) and found[0].verdict == "holds"
