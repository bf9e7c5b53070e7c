"""The 2023-2025 baselines (GDA, LP++, CLAP, ZS-LP, TaskRes, APE): each against numbers worked in
a few lines of numpy on a tiny case, and each through the shared meta-test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mamf.config import build_config
from mamf.methods.ape import ape_channels, ape_logits, ape_parts
from mamf.methods.clap import clap_multipliers, clap_penalty, fit_prototypes
from mamf.methods.embedded import Embedded
from mamf.methods.gda import gda_classifier, gda_logits
from mamf.methods.lp_plus_plus import fit_lpp, lpp_init, lpp_logits
from mamf.methods.taskres import fit_residual, taskres_classifier
from mamf.methods.tip_adapter import tip_logits
from mamf.runs.measure import evaluate_prepared
from mamf.runs.prepare import prepare

FROZEN = {"model": "tiny-random-clip", "train.freeze_image_backbone": True,
          "train.freeze_text_tower": True, "data.ways": 2, "data.protocol": "episodic",
          "data.shots": 3, "data.queries": 3, "data.tasks": 6}


def unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def task_of(support, labels, query, query_labels, texts, scale=10.0) -> Embedded:
    t = lambda a: torch.tensor(unit(a), dtype=torch.float32)  # noqa: E731
    return Embedded(t(support), torch.tensor(labels), t(query), torch.tensor(query_labels),
                    t(texts), scale)


SUPPORT = [[1, 0.2, 0.1], [1, -0.1, 0.3], [0.2, 1, 0.0], [-0.1, 1, 0.2], [0.1, 0.3, 1],
           [0.3, 0.0, 1]]
LABELS = [0, 0, 1, 1, 2, 2]
TEXTS = [[0.5, 0.5, 0.2], [0.2, 0.6, 0.5], [0.6, 0.1, 0.6]]


def small() -> Embedded:
    return task_of(SUPPORT, LABELS, [[0.9, 0.2, 0.2], [0.1, 0.8, 0.3]], [0, 1], TEXTS)


def test_gda_matches_the_closed_form_worked_in_numpy():
    task = small()
    x, y = unit(SUPPORT), np.array(LABELS)
    mu = np.stack([x[y == c].mean(0) for c in range(3)])
    centred = x - mu[y]
    scatter = centred.T @ centred
    precision = 3 * np.linalg.pinv(scatter + np.trace(scatter) / 5 * np.eye(3))
    w = mu @ precision
    b = np.log(1 / 3) - 0.5 * np.einsum("cd,de,ce->c", mu, precision, mu)
    weight, bias = gda_classifier(task)
    assert np.allclose(weight.numpy(), w, atol=1e-4) and np.allclose(bias.numpy(), b, atol=1e-4)
    q = task.query.numpy().astype(np.float64)
    expected = 10.0 * q @ unit(TEXTS).T + 0.5 * (q @ w.T + b)
    assert np.allclose(gda_logits(task, task.query, weight, bias, 0.5).numpy(), expected,
                       atol=1e-3)


def test_gda_with_one_image_per_class_is_zero_shot():
    task = task_of(SUPPORT[::2], [0, 1, 2], [[0.9, 0.2, 0.2]], [0], TEXTS)
    weight, bias = gda_classifier(task)
    assert torch.equal(weight, torch.zeros_like(weight))
    assert torch.equal(gda_logits(task, task.query, weight, bias, 10.0).argmax(1),
                       task.zero_shot_logits(task.query).argmax(1))


def test_lp_plus_plus_initial_blend_and_step_sizes_match_numpy():
    task = small()
    x, y, t = unit(SUPPORT), np.array(LABELS), unit(TEXTS)
    sums = np.stack([x[y == c].sum(0) for c in range(3)])
    text_logits = x @ t.T
    # each class's images against their own prompt (the official compute_centroids_alpha)
    alpha0 = 250 * np.mean([text_logits[y == c, c].mean() for c in range(3)])
    lr_w = 4 * 6 / np.linalg.eigvalsh(x.T @ x).max()
    lr_alpha = 6 / (4 * (text_logits ** 2).sum(0).max())
    weight, alpha, got_lr_w, got_lr_alpha = lpp_init(task)
    assert np.allclose(weight.numpy(), sums, atol=1e-5)
    assert np.allclose(alpha.numpy(), alpha0, atol=1e-3)
    assert got_lr_w == pytest.approx(lr_w, rel=1e-5)
    assert got_lr_alpha == pytest.approx(lr_alpha, rel=1e-5)
    q = task.query.numpy().astype(np.float64)
    blend = q @ sums.T + alpha0 * (q @ t.T)
    (w0, b0, a0), _ = fit_lpp(task, 0, 10, np.random.default_rng(0))
    assert np.allclose(lpp_logits(task, task.query, w0, b0 * 0, a0).numpy(), blend, atol=1e-3)
    assert (b0.abs() <= 1 / np.sqrt(3)).all() and b0.abs().sum() > 0  # torch's uniform start
    (w, b, a), _ = fit_lpp(task, 30, 10, np.random.default_rng(0))
    logits = lpp_logits(task, task.support, w, b, a)
    assert (logits.argmax(1) == task.support_labels).all()


def test_lp_plus_plus_without_support_is_zero_shot():
    # base-to-novel's novel classes come with no support image: the official step sizes divide
    # by zero there, and LP++ must fall back to the text classifier
    task = task_of(np.zeros((0, len(TEXTS[0]))), [], [[0.9, 0.2, 0.2], [0.1, 0.2, 0.9]], [0, 2],
                   TEXTS)
    params, _ = fit_lpp(task, 30, 10, np.random.default_rng(0))
    assert torch.equal(lpp_logits(task, task.query, *params).argmax(1),
                       task.zero_shot_logits(task.query).argmax(1))


def test_clap_multipliers_and_penalty_match_numpy():
    task = small()
    x, y, t = unit(SUPPORT), np.array(LABELS), unit(TEXTS)
    z = 10.0 * x @ t.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lam = np.array([p[y == c, c].mean() for c in range(3)])
    assert np.allclose(clap_multipliers(task).numpy(), lam, atol=1e-5)
    moved = task.texts + torch.tensor([[0.1, 0, 0], [0, 0.2, 0], [0, 0, 0.3]])
    expected = np.mean(lam * np.array([0.01, 0.04, 0.09]))
    assert float(clap_penalty(moved, task.texts, torch.tensor(lam, dtype=torch.float32))) == \
        pytest.approx(expected, rel=1e-5)
    # the penalty keeps the prototypes nearer the prompts than the unconstrained probe does
    rng = np.random.default_rng(0)
    free = fit_prototypes(task, 100, 0.1, constrained=False, rng=rng)
    held = fit_prototypes(task, 100, 0.1, constrained=True, rng=rng)
    assert (held - task.texts).norm() < (free - task.texts).norm()
    assert torch.equal(fit_prototypes(task, 0, 0.1, True, rng), task.texts)


def test_taskres_starts_at_zero_shot_and_its_residual_fits_the_support_set():
    task = task_of(SUPPORT, LABELS, [[0.9, 0.2, 0.2]], [0], TEXTS, scale=10.0)
    rng = np.random.default_rng(0)
    zero = fit_residual(task, 0, 2e-3, 0.5, 5e-4, rng)
    assert torch.equal(zero, torch.zeros_like(task.texts))
    assert torch.allclose(taskres_classifier(task.texts, zero, 0.5), task.texts)

    def loss(r):
        logits = task.scale * task.support @ taskres_classifier(task.texts, r, 0.5).T
        return float(F.cross_entropy(logits, task.support_labels))

    assert loss(fit_residual(task, 50, 2e-2, 0.5, 5e-4, rng)) < loss(zero)


def test_ape_criterion_matches_the_pairwise_loop_and_reduces_to_tip_adapter():
    task = small()
    x, y, t = unit(SUPPORT), np.array(LABELS), unit(TEXTS)
    feats = {c: np.vstack([t[c], x[y == c]]) for c in range(3)}
    total, count = np.zeros(3), 0
    for i in range(3):
        for j in range(3):
            if i != j:
                for a in feats[i]:
                    for b in feats[j]:
                        total += a * b
                        count += 1
    criterion = -0.5 * total / count + 0.5 * t.var(0, ddof=1)
    order = np.argsort(-criterion)
    assert ape_channels(task, 2 / 3, [0.5, 0.5]).tolist() == order[:2].tolist()
    # every channel kept and gamma 0: exactly Tip-Adapter's logits
    parts = ape_parts(task, 1.0, [0.5, 0.5])
    assert torch.allclose(ape_logits(task, task.query, parts, 2.0, 3.0, 0.0),
                          tip_logits(task, task.query, task.support, 2.0, 3.0), atol=1e-5)


@pytest.mark.parametrize("method", ["gda", "lp++", "clap", "zs-lp", "taskres", "ape", "prolip"])
def test_each_new_baseline_runs_through_the_meta_test(shared_colour_folder, method):
    """tiny-random-clip's prompts say nothing; the support set's embeddings do."""
    config = build_config(overrides={**FROZEN, "data.root": str(shared_colour_folder),
                                     "baseline.lpp_epochs": 50, "baseline.clap_epochs": 50,
                                     "baseline.taskres_epochs": 50, "baseline.taskres_lr": 2e-2,
                                     "baseline.prolip_epochs": 50, "baseline.prolip_lr": 1e-2})
    model, dataset, inputs = prepare(config)
    zero = evaluate_prepared(model, dataset, inputs, config, "zeroshot", 2, progress=False).to_json()
    row = evaluate_prepared(model, dataset, inputs, config, method, 2, progress=False).to_json()
    assert row["method"] == method
    assert row["acc_mean"] > zero["acc_mean"], (method, row["acc_mean"], zero["acc_mean"])
    if method in ("gda", "ape"):
        assert row["chosen_on_dev"]["dev_tasks"] > 0


def test_prolip_loss_is_the_cross_entropy_plus_lambda_times_the_weight_distance():
    """On a one-layer head: the first Adam step's gradient is CE's plus 2 * lambda * (P - P0) = CE's
    alone at P0, and training moves P away from P0 yet less with a larger lambda."""
    from mamf.methods.prolip import fit_projection

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 3, bias=False)
            torch.nn.init.eye_(self.proj.weight)

        def image_head(self, x):
            return self.proj(x)

    head = Head()
    feats = torch.tensor([[1.0, 0.2, 0, 0.5], [0, 1, 0.1, 0.5], [0.1, 0, 1, 0.5]])
    labels = torch.tensor([1, 2, 0])  # the identity head gets all three wrong
    texts = torch.eye(3)
    p0 = head.proj.weight.detach().clone()
    loose = fit_projection(head, [head.proj.weight], feats, labels, texts, 10.0, 50, 1e-2, 0.0)
    tight = fit_projection(head, [head.proj.weight], feats, labels, texts, 10.0, 50, 1e-2, 10.0)
    assert torch.equal(head.proj.weight, p0)  # the model itself is unchanged
    assert (tight[0] - p0).norm() < (loose[0] - p0).norm()

    def ce(weight):
        return float(F.cross_entropy(10.0 * F.normalize(feats @ weight.T, dim=-1) @ texts.T,
                                     labels))

    assert ce(loose[0]) < ce(tight[0]) < ce(p0)
