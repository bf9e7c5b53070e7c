"""A training loss that stays at chance: the warning that names its likely cause.

A loss of ln(k) (softmax cross-entropy's; each model says its own, `chance_loss`: SigLIP's
sigmoid loss has another) is a uniform guess over the k classes a method's loss spreads over (MAMF's and
FOMAML's n task classes, classical fine-tuning's N training classes). A run that ends there
learned nothing, and its rows would look like a method's failure rather than a setting's: most
often the rate is far too low for what trains (the paper's 1e-6 for CLIP end to end, used on
frozen towers, where only the small heads train, or on the offline model in a CPU's few steps).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from mamf.catalogue import Config, unfrozen

log = logging.getLogger("mamf")

NEAR = 0.95  # a last-tenth mean loss above 0.95 ln(k) is "at chance" (the run: 1.57 vs 1.61)
PAPER_CLIP_LR = 1e-6  # the paper's rate for CLIP fine-tuned end to end
HEAD_LR = 1e-2  # the cpu preset's rate for the heads over frozen towers


def at_chance(losses: list[float], classes: int | None,
              level: Callable[[int], float] = math.log) -> float | None:
    """The chance loss `level(classes)` (softmax cross-entropy's: ln(classes)) when the mean
    loss of the last tenth of steps is at or above it, else None."""
    if not losses or classes is None or classes < 2:
        return None
    chance = level(classes)
    last = float(np.mean(losses[-max(1, len(losses) // 10):]))
    return chance if last >= NEAR * chance else None


def collapsed(losses: list[float], classes: int | None,
              level: Callable[[int], float] = math.log) -> bool:
    """The run collapsed: its loss began below chance (the model knew something) and ended at
    it (`at_chance`), a uniform guess training drove it to. A run that began at chance and
    stayed there did not learn; that is its score's to show, not a collapse."""
    if at_chance(losses, classes, level) is None:
        return False
    first = float(np.mean(losses[:max(1, len(losses) // 10)]))
    return first < NEAR * level(classes)


def likely_cause(config: Config, also: str = "") -> str:
    """What in the settings most likely kept the loss at chance, in one clause; `also`: what
    the method adds (FOMAML's inner rate)."""
    t = config.train
    image, text = unfrozen(t)
    inner = f"; {also}" if also else ""
    if (image, text) == (0, 0):
        what = "both towers frozen: only the heads and the logit scale train"
        if t.lr < HEAD_LR / 10:
            return (f"train.lr={t.lr:g} is far too low for what trains ({what}; the cpu preset "
                    f"trains them at {HEAD_LR:g}){inner}")
    else:
        what = "both towers end to end" if (image, text) == (None, None) else \
            "towers partly unfrozen"
        if t.lr <= PAPER_CLIP_LR * 10:
            return (f"train.lr={t.lr:g} ({what}) is the paper's rate for CLIP on GPUs for "
                    f"epochs; on another model or in a CPU's few steps it barely moves the "
                    f"weights: try --config cpu (towers frozen, lr {HEAD_LR:g}) or a higher "
                    f"--lr{inner}")
    return (f"train.lr={t.lr:g} ({what}) did not move the loss: try another --lr, and check "
            f"that the prompts (--template, label_to_text.json) name the classes{inner}")


def warn_if_chance(config: Config, method: str, losses: list[float], classes: int | None,
                   also: str = "", level: Callable[[int], float] = math.log) -> bool:
    """Warn (and return True) when the run's loss ended at or above the model's loss of a
    uniform guess over `classes` (`level`, the model's `chance_loss`)."""
    chance = at_chance(losses, classes, level)
    if chance is None:
        return False
    last = float(np.mean(losses[-max(1, len(losses) // 10):]))
    against = f"ln({classes}) = {chance:.3f} (a uniform guess)" \
        if math.isclose(chance, math.log(classes)) else \
        f"{chance:.3f} (a uniform guess over {classes} classes, under the model's own loss)"
    log.warning("%s: training loss stayed at chance, %.3f over the last tenth of steps against "
                "%s: %s", method, last, against, likely_cause(config, also))
    return True
