"""A run's starting point: the model on its device, the dataset and the model inputs, seeded;
what images a run will read; heads and adapters as training begins."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from mamf import methods, protocols
from mamf.catalogue import Config, unfrozen
from mamf.data.dataset import ImageDataset
from mamf.features.inputs import ModelInputs
from mamf.models import adapters
from mamf.models import load_model as build_model
from mamf.models.base import DualEncoder, ProjectionHeads, require
from mamf.parallel import distributed
from mamf.system.device import compile_towers, resolve_device, set_tf32
from mamf.system.errors import MamfError


def fresh_start(model, inputs, pretrained, config: Config, trains: bool) -> None:
    """The prepared model as a run of `config` starts: pretrained weights (`pretrained`, a
    metatest.WeightSnapshot), the seed's generators, and for a method that `trains` its heads and
    adapters drawn from the seed."""
    pretrained.restore()
    seed_everything(config.seed)
    inputs.generator.manual_seed(config.seed)
    inputs.crop_scale = config.train.crop_scale  # set per method and per grid point
    if trains:
        apply_heads(model, config)
        if adapters.enabled(config.train):
            adapters.initialise(model, config.seed)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def images_read(dataset: ImageDataset, config: Config, method: str,
                scored: Iterable[str]) -> np.ndarray:
    """The images a run of `method` reads when its rows score the splits `scored`: its
    training split if it trains, and dev if it tunes there or training is scored on it
    (`train.eval_every`). What a frozen image tower computes first (`prepare`'s `reads`)."""
    cls = methods.method_class(method)
    splits = set(scored)
    if issubclass(cls, methods.TrainedMethod):
        splits.add("train")
        if config.train.eval_every:
            splits.add("dev")
    if cls.tunes_on_dev:
        splits.add("dev")
    protocol = protocols.get(config.data.protocol)
    pools = [protocol.pool(dataset, config.data, split, config.seed) for split in sorted(splits)]
    return np.unique(np.concatenate([p.all_images()[0] for p in pools])) if pools else \
        np.zeros(0, dtype=np.int64)


def prepare(config: Config, model: DualEncoder | None = None, fresh: bool = False,
            reads: Callable[[ImageDataset], np.ndarray] | None = None,
            draws: Iterable[tuple[int, int]] = ()):
    """Model on its device (eval mode: frozen batch-norm statistics, no dropout), dataset, inputs.

    `fresh`: the model is about to be trained from its pretrained weights, so `heads=random`
    applies (before any frozen tower's outputs are cached). `reads(dataset)`: the images the
    caller will read (`images_read`); a frozen tower may compute only those now. `draws`: the
    (shots, seed) pairs the caller will run besides `config`'s (CoOp's ImageNet reads only the
    training images they draw).
    """
    if not config.data.root:
        raise MamfError("no data folder given: pass --data DIR")
    device = distributed.local_device(resolve_device(config.device))
    set_tf32(device, config.train.tf32)
    distributed.init(device)
    seed_everything(config.seed)
    built = model is None
    if built:
        model = build_model(config.model)
    if fresh:
        apply_heads(model, config)
    if built and adapters.enabled(config.train):
        adapters.attach(model, config.train, config.seed)
    model.to(device).eval()
    compile_towers(model, device, config.train.compile)
    # under torchrun every rank reads (or decodes) the image cache itself, with no rank waiting
    # on another past the collective timeout; frozen-backbone features are computed in shares
    dataset = ImageDataset.load(config.data.root, model.image_size, config.data.subdataset,
                                config.data.template, config.data.templates,
                                draws={(config.data.shots, config.seed), *draws})
    image_blocks, text_layers = unfrozen(config.train)
    inputs = ModelInputs(model, dataset, device, config.precision, image_blocks == 0,
                         text_layers == 0, config.train.crop_scale, seed=config.seed,
                         image_top_blocks=image_blocks or 0, text_top_layers=text_layers or 0,
                         reads=None if reads is None else reads(dataset))
    return model, dataset, inputs


def apply_heads(model: DualEncoder, config: Config) -> None:
    """`train.heads=random` (the official code): fresh projection heads drawn from the run's seed."""
    if config.train.heads == "random":
        require(model, ProjectionHeads, f"train.heads=random cannot go with model {config.model}")
        model.reset_heads(torch.Generator().manual_seed(config.seed))


def starting_model(config: Config) -> DualEncoder:
    """The model as training of `config` starts: built, heads as set, adapters attached."""
    model = build_model(config.model)
    apply_heads(model, config)
    if adapters.enabled(config.train):
        adapters.attach(model, config.train, config.seed)
    return model

