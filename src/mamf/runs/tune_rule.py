"""Which tuning grid point may be chosen: the one rule `mamf tune` chooses by and the report's
caveats read back (light: it needs no model framework)."""

from __future__ import annotations

import numpy as np

CHANCE_MARGIN = 0.02  # dev accuracy within this of 1/n at every test-time point: at chance


def _seed_accs(score: dict) -> dict[str, float]:
    return score.get("dev_acc_by_seed") or {"": score["dev_acc"]}


def collapsed_seeds(scores: list[dict], train_point: dict) -> set[str]:
    """The tune seeds on which the training at `train_point` collapsed: every test-time point
    scored on its weights is at chance (within CHANCE_MARGIN of 1/n), so no adaptation rescued
    it. Read from the scores, so a `tune.json` written before this rule is judged alike. (A
    training's loss cannot tell: where the loss spreads over many classes, as classical
    fine-tuning's over 1,122 emoji, the pretrained model's first loss is already near ln k.)"""
    same = [s for s in scores if s["train"] == train_point and s["dev_acc"] is not None]
    if not same:
        return set()
    chance = float(np.mean([1 / n for n in same[0]["ways"]]))
    seeds = set().union(*(_seed_accs(s) for s in same))
    return {seed for seed in seeds
            if all(_seed_accs(s).get(seed, 1.0) <= chance + CHANCE_MARGIN for s in same)}


def eligible(scores: list[dict]) -> list[dict]:
    """The points that may be chosen: neither diverged (dev_acc null) nor collapsed on any tune
    seed (its training's loss fell to chance, `mamf.engine.chance.collapsed`, or `collapsed_seeds`),
    the same rule for every method."""
    return [s for s in scores if s["dev_acc"] is not None and not s.get("collapsed")
            and not collapsed_seeds(scores, s["train"])]
