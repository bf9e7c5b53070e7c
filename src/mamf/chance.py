"""A training loss that stays at chance: the warning that names its likely cause.

A loss of ln(k) is a uniform guess over the k classes a method's loss spreads over (MAMF's and
FOMAML's n task classes, classical fine-tuning's N training classes). A run that ends there
learned nothing, and its rows would look like a method's failure rather than a setting's: most
often the rate is far too low for what trains (the paper's 1e-6 for CLIP end to end, used on
frozen towers, where only the small heads train, or on the offline model in a CPU's few steps).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mamf.config import Config, unfrozen

log = logging.getLogger("mamf")

NEAR = 0.95  # a last-tenth mean loss above 0.95 ln(k) is "at chance" (the run: 1.57 vs 1.61)
PAPER_CLIP_LR = 1e-6  # the paper's rate for CLIP fine-tuned end to end
HEAD_LR = 1e-2  # the cpu preset's rate for the heads over frozen towers


def at_chance(losses: list[float], classes: int | None) -> float | None:
    """ln(classes) when the mean loss of the last tenth of steps is at or above it, else None."""
    if not losses or classes is None or classes < 2:
        return None
    chance = math.log(classes)
    last = float(np.mean(losses[-max(1, len(losses) // 10):]))
    return chance if last >= NEAR * chance else None


def collapsed(losses: list[float], classes: int | None) -> bool:
    """The run collapsed: its loss began below chance (the model knew something) and ended at
    it (`at_chance`), a uniform guess training drove it to. A run that began at chance and
    stayed there did not learn; that is its score's to show, not a collapse."""
    if at_chance(losses, classes) is None:
        return False
    first = float(np.mean(losses[:max(1, len(losses) // 10)]))
    return first < NEAR * math.log(classes)


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
                   also: str = "") -> bool:
    """Warn (and return True) when the run's loss ended at or above ln(classes)."""
    chance = at_chance(losses, classes)
    if chance is None:
        return False
    last = float(np.mean(losses[-max(1, len(losses) // 10):]))
    log.warning("%s: training loss stayed at chance, %.3f over the last tenth of steps against "
                "ln(%d) = %.3f (a uniform guess): %s", method, last, classes, chance,
                likely_cause(config, also))
    return True
