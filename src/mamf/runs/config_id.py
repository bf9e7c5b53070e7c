"""A run's settings as one short hash (`config_id`): rows with the same hash measured the same
thing, so a resumed experiment finds its rows and `evaluate` skips what is done."""

from __future__ import annotations

import hashlib
import json

from mamf.catalogue import Config, declared, value_of
from mamf.config import to_dict
from mamf.data.coop_splits import split_file_sha256

FIRST_SETTINGS = frozenset({
    "model", "seed", "device", "precision", "data.root", "data.subdataset", "data.template",
    "data.protocol", "data.ways", "data.start_n", "data.shots", "data.queries", "data.tasks",
    "data.class_split", "data.split_seed", "data.support_match", "data.query_match",
    "train.method", "train.sampler", "train.sampler_tau", "train.sampler_discount",
    "train.sampler_scale", "train.lr", "train.epochs", "train.batch_size", "train.steps",
    "train.heads", "train.schedule", "train.candidates", "train.inner_lr", "train.inner_epochs",
    "train.meta_batch", "train.inner_batch_size", "train.augment", "train.crop_scale",
    "train.freeze_image_backbone", "train.freeze_text_tower", "train.weight_decay",
    "train.checkpoint_every", "train.log_dir", "train.eval_every", "train.parallel",
    "metatest.split", "metatest.lr", "metatest.epochs", "metatest.batch_size", "metatest.reset",
    "metatest.augment", "metatest.inner_lr", "metatest.inner_epochs", "metatest.inner_batch_size",
    "metatest.interpolate", "metatest.save_predictions", "baseline.probe_steps",
    "baseline.probe_lr", "baseline.probe_weight_decay", "baseline.prototype_mix",
    "baseline.tip_alphas", "baseline.tip_betas", "baseline.tip_f_epochs", "baseline.tip_f_lr",
    "baseline.tip_f_alpha", "baseline.tip_f_beta", "baseline.gda_alphas", "baseline.lpp_epochs",
    "baseline.lpp_alpha_every", "baseline.clap_epochs", "baseline.clap_lr",
    "baseline.taskres_epochs", "baseline.taskres_lr", "baseline.taskres_scale",
    "baseline.prolip_epochs", "baseline.prolip_lr", "baseline.ape_channels",
    "baseline.ape_weights", "baseline.ape_alphas", "baseline.ape_betas", "baseline.ape_gammas",
    "baseline.coop_context", "baseline.coop_init", "baseline.coop_class_specific",
    "baseline.coop_lr", "baseline.cocoop_init", "baseline.cocoop_lr"
})

LATER_SECTIONS = ("baseline",)  # whole sections added later, left out while all at defaults


def config_id(config: Config) -> str:
    """The settings' hash, with the split file's sha256 (its content changes the numbers).
    `metatest.interpolate` is left out (a row's `alpha` says which mix it measured, and the other
    alphas do not change it), and so is every setting declared after rows were first written
    (not in `FIRST_SETTINGS`) while it sits at its default, so older results stay "the same
    settings" whatever settings are added later."""
    settings, defaults = to_dict(config), to_dict(Config())
    del settings["metatest"]["interpolate"]
    del settings["metatest"]["save_predictions"]  # what a row keeps, not what it measures
    for key in ("log_dir", "eval_every"):  # what is logged and where, not what is measured
        del settings["train"][key]
    untouched = [s for s in LATER_SECTIONS if settings[s] == defaults[s]]
    for key in declared():
        section, _, name = key.rpartition(".")
        if key not in FIRST_SETTINGS and value_of(config, key) == _at(defaults, section)[name]:
            del _at(settings, section)[name]
    for section in untouched:
        del settings[section]
    if config.data.split_file:  # the file's content changes the numbers, not only its path
        settings["data"]["split_file_sha256"] = split_file_sha256(config.data.split_file)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _at(settings: dict, section: str) -> dict:
    return settings[section] if section else settings

