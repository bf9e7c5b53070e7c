"""Linear-probe CLIP as CoOp's `lpclip` scripts run it (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022, after Radford et al.'s CLIP): the "Linear probe" row of the
field's few-shot tables (docs/method.md, "Linear-probe CLIP").

scikit-learn's L2-regularised logistic regression (lbfgs, at most 1000 iterations) on the image
features as the image tower gives them (unnormalised, as CoOp's feature extractor saves them),
fit from scratch on the support set; no text. Its inverse regularisation C is searched as the
official script does, on validation shots (here the dev-split tasks: fit on each dev task's
support set, scored on its query set, mean accuracy): first the decades 1e6, 1e4, ..., 1e-6 (the
first best kept), then `baseline.lpclip_steps` steps of a bisection in log10 C between a tenth and
ten times the best decade, each keeping the better end (the left on a tie) and halving the
interval towards it; C is the last step's choice. The results row records it.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from mamf.catalogue import Setting
from mamf.methods.base import TestTimeMethod, register
from mamf.methods.embedded import Embedded, embed_task, predicted
from mamf.methods.scorer import Scorer

log = logging.getLogger(__name__)

DECADES = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)  # the official first search


def fit(task: Embedded, c: float):
    """The logistic regression on the task's raw support features; None with fewer than two
    classes in the support set (nothing to separate)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    labels = task.support_labels.cpu().numpy()
    if len(np.unique(labels)) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the official script lets it pass
        return LogisticRegression(C=c, max_iter=1000).fit(features(task.raw_support), labels)


def features(x) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def dev_accuracy(tasks: list[Embedded], c: float) -> float:
    """Mean accuracy of the probe fit at C on each dev task's support, on its query set."""
    accs = [float((fit(t, c).predict(features(t.raw_query)) == t.query_labels.cpu().numpy())
                  .mean()) for t in tasks]
    return float(np.mean(accs))


def search_c(tasks: list[Embedded], steps: int) -> tuple[float, float]:
    """(C, its dev accuracy) by the official search: the decades, then the bisection."""
    accs = [dev_accuracy(tasks, c) for c in DECADES]
    peak = DECADES[int(np.argmax(accs))]
    left, right = 1e-1 * peak, 1e1 * peak
    chosen, best = peak, max(accs)
    for _ in range(steps):
        acc_left, acc_right = dev_accuracy(tasks, left), dev_accuracy(tasks, right)
        if acc_left < acc_right:
            chosen, best = right, acc_right
            left, right = 0.5 * (np.log10(right) + np.log10(left)), np.log10(right)
        else:
            chosen, best = left, acc_left
            left, right = np.log10(left), 0.5 * (np.log10(right) + np.log10(left))
        left, right = float(np.power(10, left)), float(np.power(10, right))
    return float(chosen), best


class Probed(Scorer):
    """A task's query images by the probe fit on its support set (`fit`); with none (a support
    set of one class), by zero-shot."""

    def __init__(self, task: Embedded, probe):
        self.task, self.probe = task, probe

    def predict(self) -> np.ndarray:
        if self.probe is None:
            return predicted(self.task.zero_shot_logits(self.task.query))
        if len(self.task.query) == 0:
            return np.zeros(0, dtype=np.int64)
        return self.probe.predict(features(self.task.raw_query)).astype(np.int64)


@register
class LinearProbeCLIP(TestTimeMethod):
    name = "linear-probe-clip"
    only_when_named = True
    tunes_on_dev = True
    settings = (Setting("baseline.lpclip_steps", int, 8, "bisection steps of the search over C "
                        "after the decades (the official script's num_step)", minimum=0),)

    def __init__(self, config):
        super().__init__(config)
        self.c = 1.0
        self._warned = False

    def tune(self, model, inputs, dev_tasks) -> dict:
        tasks = [embed_task(model, inputs, t) for t in dev_tasks]
        tasks = [t for t in tasks if len(t.query) and len(t.support_labels.unique()) >= 2]
        if not tasks:
            return {"C": self.c, "dev_tasks": 0}
        self.c, best = search_c(tasks, self.config.baseline.lpclip_steps)
        return {"C": self.c, "dev_tasks": len(tasks), "dev_acc": round(best, 6)}

    def adapt(self, model, inputs, task, rng) -> Probed:
        embedded = embed_task(model, inputs, task)
        probe = fit(embedded, self.c)
        if probe is None and not self._warned:
            log.warning("linear-probe-clip: a support set with fewer than two classes has "
                        "nothing to fit; such a task is scored as zero-shot")
            self._warned = True
        return Probed(embedded, probe)
