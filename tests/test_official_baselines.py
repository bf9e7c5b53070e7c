"""Each baseline's method class against its official code's rule, computed here independently on
a small CLIP-like case at the official hyper-parameters (issue 41).

Every reference below is written from the official code's arithmetic (the file is named above
it), never from mamf's: its own loops, optimisers built as the official code builds them, Dassl's
warm-up scheduler re-stated from Dassl. The case has CLIP's scales: raw image features of norm
about 10, raw text features of norm c = 5 (CLIP's text projection gives 3 to 8), logit scale 100.
The method classes run through a stand-in for the model and its inputs that returns these raw
features, so what is checked is the class as an experiment runs it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.linalg import eigh

from mamf import methods
from mamf.config import build_config
from mamf.methods.clap import epoch_batches
from mamf.methods.official import dassl_rate, search_grid, shuffled_batches
from mamf.models.base import ProjectionHeads
from mamf.tasks.task import Task

D, WAYS, SHOTS, QUERIES, NORM_TEXT, NORM_IMAGE, SCALE = 16, 4, 3, 10, 5.0, 10.0, 100.0


class Model:
    """The part of a model the baselines read besides the features: the logit scale."""

    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(SCALE)


class Inputs:
    """Raw features by image index and by class, as `ModelInputs` returns them."""

    device = torch.device("cpu")
    precision = "fp32"

    def __init__(self, images: torch.Tensor, texts: torch.Tensor):
        self.feats, self.text = images, texts

    def images(self, model, indices, augment=False, within=None) -> torch.Tensor:
        return self.feats[torch.as_tensor(np.asarray(indices), dtype=torch.long)]

    def texts(self, model, classes) -> torch.Tensor:
        return self.text[torch.as_tensor(np.asarray(classes), dtype=torch.long)]


def case(shots: int = SHOTS, seed: int = 0):
    """(inputs, test task, dev task): one support set (as the coop protocol gives both), a test
    and a dev query set. Class directions are noisy; the prompts point near them, imperfectly,
    so zero-shot is neither right nor hopeless."""
    g = torch.Generator().manual_seed(seed)
    common = F.normalize(torch.randn(D, generator=g), dim=0)  # what all of CLIP's features share
    centres = F.normalize(torch.randn(WAYS, D, generator=g), dim=-1)
    prompts = centres + 0.7 * torch.randn(WAYS, D, generator=g)
    texts = F.normalize(2 * common + F.normalize(prompts, dim=-1), dim=-1) * NORM_TEXT
    labels = torch.arange(WAYS).repeat_interleave(shots + 2 * QUERIES)
    noise = torch.randn(len(labels), D, generator=g) / math.sqrt(D)
    images = F.normalize(common + 0.6 * centres[labels] + 1.2 * noise, dim=-1) * NORM_IMAGE
    images *= 1 + 0.2 * torch.rand(len(labels), 1, generator=g)  # the norms vary, as CLIP's
    per = shots + 2 * QUERIES
    index = np.arange(len(labels)).reshape(WAYS, per)
    support, test, dev = index[:, :shots], index[:, shots:shots + QUERIES], index[:, -QUERIES:]
    classes = np.arange(WAYS)

    def task(query) -> Task:
        return Task(classes, support.ravel(), np.repeat(classes, shots), query.ravel(),
                    np.repeat(classes, QUERIES))

    return Inputs(images, texts), task(test), task(dev)


def run(name: str, inputs: Inputs, test: Task, dev: Task, shots: int = SHOTS, **settings):
    """The method class as the meta-test runs it: tuned on [dev], adapted to test, predicted."""
    config = build_config(overrides={"data.shots": shots, **settings})
    method = methods.create(name, config)
    chosen = method.tune(Model(), inputs, [dev]) if method.tunes_on_dev else {}
    scorer = method.adapt(Model(), inputs, test, np.random.default_rng([config.seed, 103, WAYS, 0]))
    return method, chosen, scorer.predict(), scorer


def parts(inputs: Inputs, task: Task):
    x = inputs.feats[torch.as_tensor(task.support)].double()
    y = torch.as_tensor(task.support_labels)
    q = inputs.feats[torch.as_tensor(task.query)].double()
    return x, y, q, inputs.text.double()


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class DasslWarmup(torch.optim.lr_scheduler.LRScheduler):
    """Dassl's ConstantWarmupScheduler (dassl/optim/lr_scheduler.py), re-stated: its own rate for
    `warmup` epochs, then its successor's, which it steps from then on."""

    def __init__(self, optimizer, successor, warmup: int, cons_lr: float):
        self.successor, self.warmup, self.cons_lr = successor, warmup, cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


def dassl_schedule(optimizer, epochs: int):
    """Dassl's build_lr_scheduler for the CLAP and TaskRes configs (cosine, WARMUP_EPOCH 1,
    constant 1e-5, WARMUP_RECOUNT true)."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epochs))
    return DasslWarmup(optimizer, cosine, 1, 1e-5)


def test_dassl_rate_is_dassls_warm_up_then_cosine():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    schedule = dassl_schedule(optimizer, 7)
    for epoch in range(7):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(dassl_rate(0.1, epoch, 7),
                                                                 rel=1e-12, abs=1e-15)
        optimizer.step()
        schedule.step()


def clap_reference(inputs: Inputs, task: Task, constrained: bool, epochs=300, lr=0.1):
    """CLAP's trainers/adapters.py (ADAPTER trainer, "ZS" init, "l2" constraint or "none") with
    the SGD_lr1e-1_B256_ep300 config: prototypes start at the raw text features; logits
    image_features_norm @ prototypes_norm.T * logit_scale; lambdas from the zero-shot softmax;
    loss CE + mean(lambda * ||w - t||^2); SGD momentum 0.9, weight decay 0; one batch an epoch
    here (20 copies of 12 images fill less than 256: the batch is all of them)."""
    x, y, q, t = parts(inputs, task)
    x, y, q, t = x.float(), y, q.float(), t.float()
    base = t.clone()
    prototypes = torch.nn.Parameter(base.clone())
    onehot = F.one_hot(y).float()
    zero_shot = unit(x) @ unit(base).T * SCALE
    lambdas = torch.diag(torch.softmax(zero_shot, -1).T @ onehot) / onehot.sum(0)
    optimizer = torch.optim.SGD([prototypes], lr=lr, momentum=0.9, weight_decay=0.0)
    schedule = dassl_schedule(optimizer, epochs)
    features, labels = x.repeat(20, 1), y.repeat(20)
    for _ in range(epochs):
        logits = unit(features) @ unit(prototypes).T * SCALE
        loss = F.cross_entropy(logits, labels)
        if constrained:
            loss = loss + torch.mean(lambdas * (prototypes - base).pow(2).sum(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return prototypes.detach(), (unit(q) @ unit(prototypes.detach()).T).argmax(1).numpy()


@pytest.mark.parametrize("name, constrained", [("clap", True), ("zs-lp", False)])
def test_clap_and_zs_lp_follow_the_official_code(name, constrained):
    inputs, test, dev = case()
    _, _, given, scorer = run(name, inputs, test, dev)
    prototypes, expected = clap_reference(inputs, test, constrained)
    assert torch.allclose(scorer.fitted["prototypes"], prototypes, rtol=1e-3, atol=1e-4)
    assert given.tolist() == expected.tolist()
    # mamf's earlier variant (unit text features) is another method here: it moves elsewhere
    _, _, _, unit_scorer = run(name, inputs, test, dev, **{"baseline.text_features": "unit"})
    assert not torch.allclose(F.normalize(unit_scorer.fitted["prototypes"], dim=-1),
                              F.normalize(prototypes, dim=-1), atol=1e-2)


def test_clap_draws_its_batches_of_256_from_20_copies():
    rng = np.random.default_rng(0)
    assert [len(b) for b in epoch_batches(rng, 12)] == [240]  # all 20 copies: one batch
    few = epoch_batches(rng, 100)  # 2000 copies, one batch of 256 (a loader of 100 has 1)
    assert [len(b) for b in few] == [256] and few[0].max() < 100
    assert [len(b) for b in epoch_batches(rng, 600)] == [256, 256]


def taskres_reference(inputs: Inputs, task: Task, epochs: int, lr=2e-3, scale=0.5):
    """TaskRes's trainers/taskres.py with the adam_lr2e-3_B256_ep100/ep200 configs: logits
    logit_scale * image_features_norm @ normalise(t + a * R).T, t the raw text features, R from
    zero; Dassl's Adam (weight decay 5e-4, betas 0.9/0.999) and warm-up cosine schedule; one
    batch an epoch (12 images < 256)."""
    x, y, q, t = (v.float() if v.is_floating_point() else v for v in parts(inputs, task))
    residual = torch.nn.Parameter(torch.zeros_like(t))
    optimizer = torch.optim.Adam([residual], lr=lr, weight_decay=5e-4, betas=(0.9, 0.999))
    schedule = dassl_schedule(optimizer, epochs)
    for _ in range(epochs):
        logits = SCALE * unit(x) @ unit(t + scale * residual).T
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    classifier = unit(t + scale * residual.detach())
    return residual.detach(), (unit(q) @ classifier.T).argmax(1).numpy()


@pytest.mark.parametrize("shots, epochs", [(SHOTS, 100), (5, 200)])
def test_taskres_follows_the_official_code_and_script(shots, epochs):
    """The official script (train_regular.sh) trains 100 epochs at 1-4 shots, 200 above."""
    inputs, test, dev = case(shots)
    _, _, given, scorer = run("taskres", inputs, test, dev, shots)
    residual, expected = taskres_reference(inputs, test, epochs)
    assert torch.allclose(scorer.fitted["residual"], residual, rtol=1e-3, atol=1e-5)
    assert given.tolist() == expected.tolist()


def test_dassl_and_torch_loaders_batch_as_the_official_code():
    rng = np.random.default_rng(0)
    # torch's DataLoader(shuffle=True, batch_size=256, drop_last=False): Tip-Adapter-F
    assert [len(b) for b in shuffled_batches(rng, 300)] == [256, 44]
    # Dassl's training loader drops the last incomplete batch once one is full: TaskRes
    assert [len(b) for b in shuffled_batches(rng, 300, drop_last=True)] == [256]
    assert [len(b) for b in shuffled_batches(rng, 100, drop_last=True)] == [100]
    assert sorted(np.concatenate(shuffled_batches(rng, 300)).tolist()) == list(range(300))


def lpp_reference(inputs: Inputs, test: Task, dev: Task, bias: np.ndarray, epochs=300):
    """LP++'s methods/linear_probe_p2.py with methods/utils.py: unit features; classifier weight
    the class sums (compute_centroids), its bias torch's uniform start (given: `bias`); lr_w =
    4N / max eigenvalue of F.T F; alpha from compute_centroids_alpha (each class's images against
    their own prompt) times 250, averaged; lr_alpha = N / (4 max_c sum_i (f_i.t_c)^2); SGD
    momentum 0.9; alpha stepped every 10 epochs by its gradient, never cleared; the test
    predictions of the last epoch whose validation accuracy is the best so far (`>=`)."""
    x, y, q, t = parts(inputs, test)
    _, _, v, _ = parts(inputs, dev)
    vy = torch.as_tensor(dev.query_labels)
    f, fq, fv = unit(x).float(), unit(q).float(), unit(v).float()
    w = unit(t).float().T  # clip_weights [D, n]
    n, count = WAYS, len(f)
    onehot = F.one_hot(y, n).float()
    classifier = torch.nn.Linear(D, n, bias=True)
    classifier.weight.data = (onehot.T @ f).clone()
    classifier.bias.data = torch.tensor(bias, dtype=torch.float32)
    lr_w = 4 * count / max(eigh((f.T @ f).numpy())[0])
    z = f @ w
    alpha_tilde = (onehot * z / onehot.sum(0, keepdim=True)).sum(0).double() * SHOTS
    alpha_init = torch.mean(250 / SHOTS * alpha_tilde)
    alpha_vec = (alpha_init * torch.ones(1, n)).float().requires_grad_(True)
    lr_alpha = count / (max(torch.sum(torch.pow(z, 2), dim=0)) * 4)
    optimizer = torch.optim.SGD(classifier.parameters(), lr_w, momentum=0.9)
    best, chosen = 0.0, None
    for epoch in range(epochs):
        logits = classifier(f) + torch.ones(count, 1) @ alpha_vec * z
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (epoch + 1) % 10 == 0:
            alpha_vec.data -= lr_alpha * alpha_vec.grad.data
        with torch.no_grad():
            val = classifier(fv) + torch.ones(len(fv), 1) @ alpha_vec * (fv @ w)
            acc = float((val.argmax(1) == vy).float().mean())
            if acc >= best:
                best = acc
                chosen = (epoch, (classifier(fq) + torch.ones(len(fq), 1) @ alpha_vec
                                  * (fq @ w)).argmax(1).numpy(), classifier.bias.clone(),
                          alpha_vec.detach().clone())
    return chosen


def test_lp_plus_plus_follows_the_official_code():
    inputs, test, dev = case()
    config = build_config()
    bias = np.random.default_rng([config.seed, 151, WAYS]).uniform(-1 / math.sqrt(D),
                                                                   1 / math.sqrt(D), WAYS)
    method, chosen, given, scorer = run("lp++", inputs, test, dev)
    epoch, expected, bias_at, alpha_at = lpp_reference(inputs, test, dev, bias)
    assert chosen["epochs"] == epoch + 1
    assert given.tolist() == expected.tolist()
    _, got_bias, got_alpha = scorer.fitted["params"]
    assert torch.allclose(got_bias, bias_at, atol=1e-5)
    assert torch.allclose(got_alpha, alpha_at.reshape(-1), rtol=1e-4)


def tip_reference(inputs: Inputs, test: Task, dev: Task, keys: torch.Tensor | None = None,
                  alpha0=1.17, beta0=1.0, epochs=0, order=None):
    """Tip-Adapter's main.py (run_tip_adapter, run_tip_adapter_F) and utils.py (search_hp) with
    the ImageNet config (search_scale [7, 3], search_step [200, 20], init_alpha 1.17, init_beta
    1, lr 0.001, train_epoch 20): clip_logits = 100 f @ W; cache exp(-(beta - beta f K)) @ L;
    Tip-Adapter-F trains K as a linear layer by AdamW (eps 1e-4) over shuffled batches of 256
    (`order`: each epoch's permutation), cosine over every step; then beta-then-alpha search on
    validation, strict `>` from 0. (The official code also keeps Tip-Adapter-F's best epoch on
    the test set; mamf does not look at test labels: the last epoch here.)"""
    x, y, q, t = (v.float() if v.is_floating_point() else v for v in parts(inputs, test))
    _, _, v, _ = parts(inputs, dev)
    v, vy = v.float(), torch.as_tensor(dev.query_labels)
    f, fq, fv, w = unit(x), unit(q), unit(v), unit(t).T
    values = F.one_hot(y, WAYS).float()
    adapter = torch.nn.Linear(D, len(f), bias=False)
    adapter.weight = torch.nn.Parameter(f.clone())
    if epochs:
        batches = -(-len(f) // 256)
        optimizer = torch.optim.AdamW(adapter.parameters(), lr=0.001, eps=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * batches)
        for epoch in range(epochs):
            perm = order(epoch)
            for b in range(batches):
                idx = torch.as_tensor(perm[b * 256 : (b + 1) * 256])
                affinity = adapter(f[idx])
                cache = ((-1) * (beta0 - beta0 * affinity)).exp() @ values
                logits = 100.0 * f[idx] @ w + cache * alpha0
                loss = F.cross_entropy(logits, y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    betas = [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]
    alphas = [i * (3 - 0.1) / 20 + 0.1 for i in range(20)]
    best, best_beta, best_alpha = 0.0, 0.0, 0.0
    with torch.no_grad():
        for beta in betas:
            for alpha in alphas:
                affinity = adapter(fv)
                cache = ((-1) * (beta - beta * affinity)).exp() @ values
                acc = float(((100.0 * fv @ w + cache * alpha).argmax(1) == vy).float().mean())
                if acc > best:
                    best, best_beta, best_alpha = acc, beta, alpha
        cache = ((-1) * (best_beta - best_beta * adapter(fq))).exp() @ values
        given = (100.0 * fq @ w + cache * best_alpha).argmax(1).numpy()
    return (best_alpha, best_beta), given, adapter.weight.detach()


def test_tip_adapter_follows_the_official_search():
    inputs, test, dev = case()
    method, chosen, given, _ = run("tip-adapter", inputs, test, dev)
    (alpha, beta), expected, _ = tip_reference(inputs, test, dev)
    assert (chosen["alpha"], chosen["beta"]) == pytest.approx((alpha, beta), rel=1e-12)
    assert given.tolist() == expected.tolist()
    assert method.betas == search_grid(7, 200) and method.alphas == search_grid(3, 20)


@pytest.mark.parametrize("shots", [SHOTS, 75])
def test_tip_adapter_f_follows_the_official_code(shots):
    """At 75 shots the 300 support images make two batches a step (256 and 44)."""
    inputs, test, dev = case(shots)
    config = build_config(overrides={"data.shots": shots})
    # the permutations mamf's loader draws, by the same seeded stream: fine-tuning on the dev
    # task (in tune) draws from its own stream, the test task's from the meta-test's
    dev_rng = np.random.default_rng([config.seed, 152, 0])
    test_rng = np.random.default_rng([config.seed, 103, WAYS, 0])
    dev_orders = [dev_rng.permutation(WAYS * shots) for _ in range(20)]
    test_orders = [test_rng.permutation(WAYS * shots) for _ in range(20)]
    method, chosen, given, scorer = run("tip-adapter-f", inputs, test, dev, shots)
    # the search sees the keys fine-tuned on the dev task's support set (the same images here)
    (alpha, beta), _, dev_keys = tip_reference(inputs, test, dev, epochs=20,
                                               order=dev_orders.__getitem__)
    _, _, test_keys = tip_reference(inputs, test, dev, epochs=20, order=test_orders.__getitem__)
    assert torch.allclose(scorer.fitted["keys"], test_keys, atol=1e-5)
    assert (chosen["alpha"], chosen["beta"]) == pytest.approx((alpha, beta), rel=1e-12)
    x, y, q, t = (v.float() if v.is_floating_point() else v for v in parts(inputs, test))
    cache = ((-1) * (beta - beta * unit(q) @ test_keys.T)).exp() @ F.one_hot(y, WAYS).float()
    expected = (100.0 * unit(q) @ unit(t).T + cache * alpha).argmax(1).numpy()
    assert given.tolist() == expected.tolist()
    assert not torch.allclose(dev_keys, unit(x), atol=1e-4)  # the keys did move


def ape_reference(inputs: Inputs, test: Task, dev: Task):
    """APE's main.py (APE) and utils.py (cal_criterion, only_use_txt False) with the Caltech101
    config (w_training_free [0.5, 0.5], training_free_feat_num 800 of 1024 -> a share 0.78125,
    search_scale [7, 7, 1], search_step [200, 20, 20]): the criterion from every cross-class
    pair of (prompt and support) features, the top channels, refined keys and prompts, KL
    divergence of each key's zero-shot softmax from its label, then beta, alpha, gamma searched
    in that nesting on validation (strict `>` from 0)."""
    x, y, q, t = (v.float() if v.is_floating_point() else v for v in parts(inputs, test))
    _, _, v, _ = parts(inputs, dev)
    v, vy = v.float(), torch.as_tensor(dev.query_labels)
    keys, fq, fv, w = unit(x), unit(q), unit(v), unit(t).T  # clip_weights [D, n]
    text_feat = w.t().unsqueeze(1)
    cache_feat = keys.reshape(WAYS, SHOTS, D)
    feats = torch.cat([text_feat, cache_feat], dim=1)
    sim_sum, count = torch.zeros(D), 0
    for i in range(WAYS):
        for j in range(WAYS):
            for m in range(feats.shape[1]):
                for k in range(feats.shape[1]):
                    if i != j:
                        sim_sum += feats[i, m, :] * feats[j, k, :]
                        count += 1
    criterion = -0.5 * sim_sum / count + 0.5 * torch.var(w, dim=1)
    indices = torch.topk(criterion, k=round(0.78125 * D)).indices
    new_w = w[indices, :] / w[indices, :].norm(dim=0, keepdim=True)
    new_keys = unit(keys[:, indices])
    values = F.one_hot(y, WAYS).float()
    key_logits = (new_keys @ new_w).softmax(1)
    cache_div = torch.sum(values * torch.log2((values + 1e-6) / (key_logits + 1e-6)), dim=1)[:, None]
    r_ff, r_fw = unit(fv[:, indices]) @ new_keys.t(), 100.0 * fv @ w
    betas = [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]
    alphas = torch.tensor([i * (7 - 0.1) / 20 + 0.1 for i in range(20)])
    gammas = [i * 1 / 20 for i in range(20)]
    best, chosen = 0.0, (0.0, 0.0, 0.0)
    for beta in betas:
        kernel = ((-1) * (beta - beta * r_ff)).exp()
        # the alpha loop, written out over a stacked axis (the same products, one call)
        accs = torch.stack([((r_fw + (kernel @ (values * (cache_div * g).exp()))[None]
                              * alphas[:, None, None]).argmax(-1) == vy).float().mean(-1)
                            for g in gammas], dim=1)  # [alpha, gamma]
        for a in range(len(alphas)):
            for g in range(len(gammas)):
                if float(accs[a, g]) > best:
                    best, chosen = float(accs[a, g]), (float(alphas[a]), beta, gammas[g])
    alpha, beta, gamma = chosen
    soft = values * (cache_div * gamma).exp()
    logits = 100.0 * fq @ w + ((-1) * (beta - beta * unit(fq[:, indices]) @ new_keys.t())
                               ).exp() @ soft * alpha
    return chosen, logits.argmax(1).numpy()


def test_ape_follows_the_official_code():
    inputs, test, dev = case()
    _, chosen, given, _ = run("ape", inputs, test, dev)
    (alpha, beta, gamma), expected = ape_reference(inputs, test, dev)
    assert (chosen["alpha"], chosen["beta"], chosen["gamma"]) == \
        pytest.approx((alpha, beta, gamma), rel=1e-6)
    assert given.tolist() == expected.tolist()


def lpclip_reference(inputs: Inputs, test: Task, dev: Task):
    """CoOp's lpclip/linear_probe.py: scikit-learn's lbfgs logistic regression (max_iter 1000,
    l2) on the raw features; C from the decades 1e6..1e-6 on validation, then 8 bisection steps
    in log10 between a tenth and ten times the best; the last step's classifier scores test."""
    from sklearn.linear_model import LogisticRegression

    x, y, q, _ = parts(inputs, test)
    _, _, v, _ = parts(inputs, dev)
    x, y, q, v = x.numpy(), y.numpy(), q.numpy(), v.numpy()
    vy = dev.query_labels

    def clf(c):
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(x, y)

    def acc(model):
        return sum(model.predict(v) == vy) / len(vy)

    search = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    c_peak = search[int(np.argmax([acc(clf(c)) for c in search]))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    for _ in range(8):
        left, right = clf(c_left), clf(c_right)
        if acc(left) < acc(right):
            c_final, final = c_right, right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final, final = c_left, left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, final.predict(q)


def test_linear_probe_clip_follows_coops_lpclip_script():
    inputs, test, dev = case(seed=3)
    method, chosen, given, scorer = run("linear-probe-clip", inputs, test, dev)
    c, expected = lpclip_reference(inputs, test, dev)
    assert chosen["C"] == pytest.approx(c, rel=1e-9)
    assert given.tolist() == expected.tolist()
    # the raw features, not the unit ones: at a weak C the probe's answer depends on the norms
    assert scorer.probe.coef_.shape == (WAYS, D)


def test_the_official_preset_pins_the_defaults_and_the_official_grids():
    """`--preset official-baselines` names every baseline's official values; mamf's defaults are
    the same, so a study at defaults runs the official hyper-parameters too."""
    from mamf.api import make_config, preset
    from mamf.config import to_dict

    pinned = preset("official-baselines")["baseline"]
    defaults = to_dict(build_config())["baseline"]
    assert {k: defaults[k] for k in pinned} == pinned
    config = make_config("official-baselines")
    tip = methods.create("tip-adapter", config)
    assert tip.betas[:2] == pytest.approx([0.1, 0.1345]) and len(tip.betas) == 200
    assert tip.alphas[-1] == pytest.approx(0.1 + 19 * 2.9 / 20) and len(tip.alphas) == 20
    ape = methods.create("ape", config)
    assert (len(ape.betas), len(ape.alphas), len(ape.gammas)) == (200, 20, 20)
    assert ape.alphas[-1] == pytest.approx(0.1 + 19 * 6.9 / 20)
    assert ape.gammas[:3] == pytest.approx([0.0, 0.05, 0.1])


def gda_reference(inputs: Inputs, test: Task, dev: Task):
    """GDA's main_few_shots.py (run): class means; the KS estimator cov_inv = D * pinv((N - 1)
    cov + tr(cov) I) of the class-centred features; W = mu cov_inv, b = log(1/n) - mu cov_inv mu
    / 2; logits 100 f @ clip_weights + alpha (f @ W + b), alpha the first of [1e-4, ..., 100]
    whose validation accuracy beats the best so far."""
    x, y, q, t = (v.float() if v.is_floating_point() else v for v in parts(inputs, test))
    _, _, v, _ = parts(inputs, dev)
    vecs, fq, fv, w = unit(x), unit(q), unit(v.float()), unit(t).T
    vy = torch.as_tensor(dev.query_labels)
    mus = torch.cat([vecs[y == i].mean(dim=0, keepdim=True) for i in range(WAYS)])
    center = torch.cat([vecs[y == i] - mus[i].unsqueeze(0) for i in range(WAYS)])
    cov = center.T.cov()
    cov_inv = center.shape[1] * torch.linalg.pinv((center.shape[0] - 1) * cov
                                                   + cov.trace() * torch.eye(D))
    ps = torch.ones(WAYS) / WAYS
    weight = torch.einsum("nd, dc -> cn", mus, cov_inv)
    bias = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    best, best_alpha = 0.0, 0.1
    for alpha in [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]:
        acc = float(((100.0 * fv @ w + alpha * (fv @ weight + bias)).argmax(1) == vy).float()
                    .mean())
        if acc > best:
            best, best_alpha = acc, alpha
    return best_alpha, (100.0 * fq @ w + best_alpha * (fq @ weight + bias)).argmax(1).numpy()


def test_gda_follows_the_official_code():
    inputs, test, dev = case(shots=8)
    _, chosen, given, _ = run("gda", inputs, test, dev, shots=8)
    alpha, expected = gda_reference(inputs, test, dev)
    assert chosen["alpha"] == alpha
    assert given.tolist() == expected.tolist()


@ProjectionHeads.register  # a stand-in (no towers, no reset): what prolip reads of one
class HeadModel(Model):
    """A model whose image head is a linear projection (RN50's attention-pool c_proj: a weight
    that trains and a bias that stays) over cached backbone features."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.proj = torch.nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        self.proj.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)

    def head_parameters(self):
        return [self.proj.weight, self.proj.bias]

    def image_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class BackboneInputs(Inputs):
    """Cached backbone outputs (before the projection) by image index."""

    features = True
    image_top_blocks = 0

    def frozen_features(self, indices) -> torch.Tensor:
        return self.feats[torch.as_tensor(np.asarray(indices), dtype=torch.long)]


def test_prolip_follows_the_official_code():
    """ProLIP's methods/ProLIP.py with the few_shot_no_val_lr1e-3_lambda_1_N config: only the
    projection's weight trains (the bias stays), full batch, Adam (eps 1e-4) at 1e-3 with cosine
    decay over 300 epochs, loss CE(100 normalise(P x) @ text_weights) + (1 / shots) * the summed
    squared distance of P from its start; then normalise(P x) @ text_weights scores the test set."""
    g = torch.Generator().manual_seed(5)
    inputs, test, dev = case()
    width = 24
    backbone = torch.randn(len(inputs.feats), width, generator=g) + inputs.feats @ torch.randn(
        D, width, generator=g) * 0.1
    weight0, bias0 = torch.randn(D, width, generator=g) / math.sqrt(width), torch.randn(D,
                                                                                      generator=g)
    model = HeadModel(weight0, bias0)
    cached = BackboneInputs(backbone, inputs.text)
    config = build_config(overrides={"data.shots": SHOTS})
    method = methods.create("prolip", config)
    scorer = method.adapt(model, cached, test, np.random.default_rng(0))
    given = scorer.predict()
    assert torch.equal(model.proj.weight, weight0)  # the model itself is unchanged

    # the reference
    x = backbone[torch.as_tensor(test.support)]
    y = torch.as_tensor(test.support_labels)
    text_weights = unit(inputs.text.float()).T
    proj = torch.nn.Linear(width, D)
    proj.weight = torch.nn.Parameter(weight0.clone())
    proj.bias = torch.nn.Parameter(bias0.clone(), requires_grad=False)
    start = weight0.clone()
    mse = torch.nn.MSELoss(reduction="sum")
    optimizer = torch.optim.Adam([proj.weight], lr=1e-3, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 300)
    for _ in range(300):
        logits = 100.0 * F.normalize(proj(x), dim=-1) @ text_weights
        loss = F.cross_entropy(logits, y) + (1 / SHOTS) * mse(start.view(-1), proj.weight.view(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    q = backbone[torch.as_tensor(test.query)]
    expected = (F.normalize(proj(q), dim=-1) @ text_weights).argmax(1).numpy()
    assert torch.allclose(scorer.weights[0], proj.weight.detach(), atol=1e-5)
    assert given.tolist() == expected.tolist()


def test_a_grid_of_the_wrong_shape_and_the_old_probe_name_are_refused_in_one_line():
    from mamf.system.errors import MamfError

    with pytest.raises(MamfError, match=r"^config baseline.tip_search_scale and .tip_search_step "
                                        r"must each hold two values"):
        methods.create("tip-adapter", build_config(overrides={"baseline.tip_search_step": "[200]"}))
    with pytest.raises(MamfError, match=r"^config baseline.ape_search_scale and .ape_search_step "
                                        r"must each hold three values"):
        methods.create("ape", build_config(overrides={"baseline.ape_search_scale": "[7, 7]"}))
    with pytest.raises(MamfError, match=r"^method 'linear-probe' was renamed: use zs-probe"):
        methods.create("linear-probe", build_config())
