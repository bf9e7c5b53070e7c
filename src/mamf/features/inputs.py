"""Feeds a model: image indices -> image embeddings, class ids -> text embeddings.

Prompts are tokenised once per dataset; a step encodes each of its candidate classes' prompts once,
never once per image. With a frozen image backbone, its outputs are computed once per cached image
(on onnxruntime first only for the images a run says it reads, any other when first read) and the
step runs only the image head. With only the last k blocks of a tower trainable
(`train.unfreeze_image_blocks`, `unfreeze_text_layers`), the frozen part's outputs at the boundary
are computed once (images: on disk, beside the image cache; prompts: in memory) and a step runs
only the top k blocks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mamf.data.cache import CACHE_HINT
from mamf.data.dataset import ImageDataset
from mamf.data.prompts import refuse_shared_tokens
from mamf.features import frozen_engine
from mamf.features.augment import draws, random_crop_flip
from mamf.models import split
from mamf.models.base import DualEncoder
from mamf.parallel import distributed
from mamf.system import progress
from mamf.system.device import autocast, host_to_device, resolve_device, resolve_precision  # noqa: F401
from mamf.system.io import writing

log = logging.getLogger(__name__)

PROMPT_CHUNK = 1024  # prompts a GPU encodes at once


class ModelInputs:
    """Everything a step needs from the data, for one model and one dataset.

    `image_top_blocks` / `text_top_layers` k > 0: only the tower's last k blocks (layers) train;
    the frozen part below is run once and its outputs cached (`freeze_*`: k = 0, the whole tower).
    """

    def __init__(self, model: DualEncoder, dataset: ImageDataset, device: torch.device,
                 precision: str = "fp32", freeze_image_backbone: bool = False,
                 freeze_text_tower: bool = False,
                 crop_scale: float = 0.8, seed: int = 0, feature_batch: int = 64,
                 image_top_blocks: int = 0, text_top_layers: int = 0,
                 reads: np.ndarray | None = None):
        self.dataset = dataset
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.crop_scale = crop_scale
        self.generator = torch.Generator().manual_seed(seed)
        self.images_seen = 0
        # a prompt ensemble tokenises every class's prompts, class by class, `per_class` each
        prompts = dataset.ensemble or [[p] for p in dataset.prompts]
        self.per_class = len(prompts[0])
        tokens = model.tokenize([p for group in prompts for p in group])
        refuse_shared_tokens(tokens, dataset.classes, dataset.prompts, self.per_class)
        # each prompt's length, on the host: a step cuts its prompts' padding without a read
        mask = tokens.get("attention_mask")
        self.token_lengths = None if mask is None else mask.sum(1).cpu().numpy()
        self.tokens = {k: v.to(device) for k, v in tokens.items()}
        if freeze_image_backbone and image_top_blocks or freeze_text_tower and text_top_layers:
            raise ValueError("a frozen tower has no trainable top blocks")
        self.image_top_blocks = image_top_blocks
        if image_top_blocks:
            split.check(model, "image", image_top_blocks)
        self.text_top_layers = text_top_layers
        if text_top_layers:
            split.check(model, "text", text_top_layers)
        # the frozen image part's outputs: the backbone's, or the boundary below the top blocks
        self.features: torch.Tensor | None = None
        # where the frozen outputs are held: a boundary below the top blocks, [images, tokens,
        # width], on the host (tens of GB at ImageNet's scale) and each batch's rows streamed
        # to the device; a backbone's [images, dim] on the device
        self.store = torch.device("cpu") if image_top_blocks else device
        self._missing: np.ndarray | None = None  # images whose frozen outputs are not computed
        self._fill: tuple | None = None  # what computes them when first read
        self._fill_engine: tuple | None = None  # (backbone, on onnxruntime), made on first use
        if freeze_image_backbone or image_top_blocks:
            self.features = self._backbone_features(model, feature_batch, image_top_blocks, reads)
        self.text_cache: torch.Tensor | None = None
        if freeze_text_tower:
            self.text_cache = self._text_embeddings(model, feature_batch)
        self.text_boundary: torch.Tensor | None = None
        if text_top_layers:
            self.text_boundary = self._text_boundary(model, feature_batch)

    def _text_embeddings(self, model: DualEncoder, batch: int) -> torch.Tensor:
        for p in model.text_parameters():
            p.requires_grad_(False)
        ids = np.arange(len(self.dataset.prompts))
        batch = max(1, batch // self.per_class)  # classes a chunk, so a chunk's prompts stay few
        chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        return self._embed_chunks(model, chunks, self._text_tower(model, chunks))

    def _embed_chunks(self, model: DualEncoder, chunks: list[np.ndarray],
                      encode: frozen_engine.TextTower) -> torch.Tensor:
        """The embeddings of these chunks of classes, through `encode`, in one tensor."""
        bar = progress.bar(chunks, enabled=distributed.is_main(),
                           desc="caching frozen text features (once)", unit="chunk", leave=False)
        with torch.no_grad(), autocast(self.device, self.precision):
            return torch.cat([self._encode_texts(model, c, encode).float() for c in bar])

    def _text_tower(self, model: DualEncoder, chunks: list[np.ndarray]) -> frozen_engine.TextTower:
        """What maps a chunk's tokens to embeddings: the text tower on onnxruntime where the
        engine serves (on every rank, or on none), else `model.encode_texts`."""
        if frozen_engine.engine_for(model, self.device, self.precision) == frozen_engine.TORCH:
            return model.encode_texts
        tokens = [self._tokens(self._prompt_rows(c)) for c in chunks]
        with distributed.main_first():  # rank 0 exports; the others find its file
            run = frozen_engine.onnx_text_tower(model, frozen_engine.text_digest(model), tokens)
        if distributed.sum_scalar(float(run is None)) == 0:
            return run
        return model.encode_texts

    def _text_boundary(self, model: DualEncoder, batch: int) -> torch.Tensor:
        """Hidden states below the text tower's top layers, [prompts, tokens, width] (each chunk
        padded to the longest prompt; a step cuts its rows to their own longest). Under a prompt
        ensemble a class has `per_class` rows."""
        k = self.text_top_layers
        freeze_except(model.text_parameters(), model.text_top_parameters(k))
        ids = np.arange(next(iter(self.tokens.values())).shape[0])
        width = next(iter(self.tokens.values())).shape[1]
        starts = progress.bar(range(0, len(ids), batch), enabled=distributed.is_main(),
                              desc="caching frozen text layers' outputs (once)", unit="chunk",
                              leave=False)
        chunks = []
        with torch.no_grad(), autocast(self.device, self.precision):
            for i in starts:
                hidden = model.text_bottom(self._tokens(ids[i : i + batch]), k).float()
                chunks.append(F.pad(hidden, (0, 0, 0, width - hidden.shape[1])).cpu())
        return torch.cat(chunks)  # on the host, as the image boundary: a step streams its rows

    def _backbone_features(self, model: DualEncoder, batch: int, top_blocks: int = 0,
                           reads: np.ndarray | None = None) -> torch.Tensor:
        """Backbone outputs (`top_blocks` k > 0: the boundary activations below the last k
        blocks) for every cached image, kept on disk beside the image cache and keyed by the
        images, the frozen part's exact weights, k, the precision and the engine.

        `reads`: the images the caller will read (say, not the dev split). On onnxruntime only
        those are computed now, and any other on its first use: its per-image outputs do not
        depend on which images share a batch (`tests/test_frozen_engine.py`), so the numbers
        are those of a full pass. PyTorch's kernels may round differently by batch: on it every
        image is computed, in the same chunks as always."""
        if top_blocks:
            frozen = freeze_except(model.image_backbone_parameters(),
                                   model.image_top_parameters(top_blocks))
            weights = frozen_engine.weights_digest(model, frozen)
        else:
            freeze_backbone(model)
            weights = frozen_engine.weights_digest(model)
        n = len(self.dataset.images)
        engine = frozen_engine.engine_for(model, self.device, self.precision)
        wanted = np.ones(n, dtype=bool)
        if reads is not None and engine == frozen_engine.ONNXRUNTIME:
            wanted[:] = False
            wanted[np.asarray(reads, dtype=np.int64)] = True
            wanted[0] |= not wanted.any()  # one image at least: it gives the outputs' shape
        path = self._feature_cache_path(weights, engine, top_blocks)
        # rank 0 decides for all (every rank must join the computation's gather, or none); each
        # rank reads the file itself, whose rows only ever grow, each with the same bits
        have = distributed.from_main(_held(path) if distributed.is_main() else None)
        fill = (model, weights, top_blocks, batch, path)
        if have is not None and have[wanted].all():
            return self._keep(self._load(path), have, fill)
        backbone, on_engine = self._frozen_part(model, weights, top_blocks, collective=True)
        if engine == frozen_engine.ONNXRUNTIME and not on_engine:
            # PyTorch after all: every image, under PyTorch's own cache file
            wanted[:] = True
            path = self._feature_cache_path(weights, frozen_engine.TORCH, top_blocks)
            have = distributed.from_main(_held(path) if distributed.is_main() else None)
        if have is not None and have.all():
            return self._keep(self._load(path), have, None)
        if not on_engine:  # PyTorch never adds to a partial file: its chunks are always the same
            have = None
        todo = np.flatnonzero(wanted & ~have) if have is not None else np.flatnonzero(wanted)
        computed = self._compute_backbone_features(model, backbone, batch, on_engine, todo)
        features = torch.zeros((n, *computed.shape[1:]), dtype=computed.dtype,
                               device=self.store) if have is None else self._load(path)
        have = np.zeros(n, dtype=bool) if have is None else have.copy()
        features[torch.as_tensor(todo, device=self.store)] = computed.to(self.store)
        have[todo] = True
        if path is not None and distributed.is_main():
            _write_features(path, features, have)
        return self._keep(features, have, fill)

    def _frozen_part(self, model: DualEncoder, weights: str, top_blocks: int,
                     collective: bool) -> tuple[frozen_engine.Backbone, bool]:
        """What computes the frozen outputs, and whether it is onnxruntime (on every rank or on
        none when `collective`; a rank filling in images of its own alone decides for itself)."""
        backbone = model.image_backbone if not top_blocks else \
            (lambda pixels: model.image_bottom(pixels, top_blocks))
        if frozen_engine.engine_for(model, self.device, self.precision) != frozen_engine.ONNXRUNTIME:
            return backbone, False
        if not collective:
            run = frozen_engine.onnx_backbone(model, weights, top_blocks)
            return (backbone, False) if run is None else (run, True)
        with distributed.main_first():  # rank 0 exports; the others find its file
            run = frozen_engine.onnx_backbone(model, weights, top_blocks)
        if distributed.sum_scalar(float(run is None)) == 0:  # on every rank, or on none
            return run, True
        return backbone, False

    def _load(self, path: Path) -> torch.Tensor:
        return torch.from_numpy(_stored_features(path)).to(self.store)

    def _keep(self, features: torch.Tensor, have: np.ndarray, fill: tuple | None) \
            -> torch.Tensor:
        """Hold `features`; `fill` names what computes the images `have` lacks, on first read."""
        self._missing = None if have.all() else ~have
        self._fill = fill
        return features

    def frozen_features(self, indices: np.ndarray) -> torch.Tensor:
        """The cached frozen outputs of `indices`, computing first any not computed yet (images
        outside the `reads` a run declared: read after all, they get a full pass's numbers)."""
        if self._missing is not None:
            self._complete(np.asarray(indices, dtype=np.int64))
        indices = np.asarray(indices, dtype=np.int64)
        if self.store != self.device:  # gathered on the host, copied from pinned memory
            return host_to_device(self.features[torch.from_numpy(indices)], self.device)
        return self.features[host_to_device(indices, self.device)]

    def _complete(self, indices: np.ndarray) -> None:
        todo = np.unique(indices[self._missing[indices]])
        if len(todo) == 0:
            return
        model, weights, top_blocks, batch, path = self._fill
        if self._fill_engine is None:  # the engine's session is made once, on the first fill
            self._fill_engine = self._frozen_part(model, weights, top_blocks, collective=False)
        backbone, on_engine = self._fill_engine
        log.info("computing the frozen image features of %d more image(s), read though not "
                 "declared", len(todo))
        self.features[torch.as_tensor(todo, device=self.store)] = self._compute_backbone_features(
            model, backbone, batch, on_engine, todo, share=False).to(self.store)
        self._missing[todo] = False
        if path is not None and distributed.is_main():
            _write_features(path, self.features, ~self._missing)
        if not self._missing.any():
            self._missing = None

    def _feature_cache_path(self, weights: str, engine: str, top_blocks: int = 0) -> Path | None:
        source = getattr(self.dataset.images, "filename", None)
        if source is None:
            return None
        key = f"{Path(source).name}|{self.precision}|{self.device.type}|{engine}|{weights}"
        if top_blocks:
            key += f"|below the last {top_blocks} blocks"
        return Path(source).with_name(f"features-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz")

    def _compute_backbone_features(self, model: DualEncoder, backbone: frozen_engine.Backbone,
                                   batch: int, contiguous: bool, todo: np.ndarray,
                                   share: bool = True) -> torch.Tensor:
        """The outputs of images `todo`, in chunks of `batch`. Under torchrun (`share`) each
        rank computes a run of whole chunks (the chunks one process would form, so the numbers
        are the same) and the ranks gather them; without `share` each rank computes all."""
        n = len(todo)
        starts = list(range(0, n, batch))
        world = distributed.world_size() if share else 1
        if len(starts) < world:  # too few chunks to share out: every rank computes all
            world = 1
        spans = [distributed.share(len(starts), r, world) for r in range(world)]
        first, count = spans[distributed.rank() if world > 1 else 0]
        chunks = []
        with torch.no_grad(), autocast(self.device, self.precision):
            for start in progress.bar(starts[first : first + count], enabled=distributed.is_main(),
                                      desc="caching frozen image features (once)", unit="chunk",
                                      leave=False):
                idx = todo[start : start + batch]
                px = model.preprocess(self.dataset.batch(idx).to(self.device), contiguous)
                chunks.append(backbone(px).float().to(self.store))
        local = torch.cat(chunks) if chunks else torch.zeros(0)
        if world == 1:
            return local
        sizes = [min(n, (f + c) * batch) - f * batch for f, c in spans]
        # NCCL gathers on the device
        return distributed.gather_rows(local.to(self.device), sizes).to(self.store)

    def images(self, model: DualEncoder, indices: np.ndarray, augment: bool = False,
               within: tuple[int, int] | None = None) -> torch.Tensor:
        """Embeddings of `indices`. `within=(start, total)`: these images are rows start.. of a
        batch of `total` split across ranks; augmentation draws for the whole batch and takes
        these rows, so every rank count consumes the generator alike and crops the same."""
        self.images_seen += len(indices)  # the training log's images/s
        if self.features is not None:
            cached = self.frozen_features(indices)
            if self.image_top_blocks:
                cached = model.image_top(cached, self.image_top_blocks)
            return model.image_head(cached)
        pixels = model.preprocess(host_to_device(self.dataset.batch(indices), self.device))
        if augment:
            start, total = within or (0, len(indices))
            rows = draws(self.generator, total)[start : start + len(indices)]
            pixels = random_crop_flip(pixels, rows, self.crop_scale)
        return model.encode_images(pixels)

    def reseed(self, rng: np.random.Generator) -> None:
        """Seed augmentation from a per-task stream, so a task's crops do not depend on which
        rank runs it or what ran before."""
        self.generator.manual_seed(int(rng.integers(2**62)))

    def texts(self, model: DualEncoder, class_ids: np.ndarray) -> torch.Tensor:
        if self.text_cache is not None:
            return self.text_cache[host_to_device(np.asarray(class_ids), self.device)]
        if self.text_boundary is not None:
            ids = np.asarray(class_ids)
            prompts = self._prompt_rows(ids)
            tokens = self._tokens(prompts)
            width = next(iter(tokens.values())).shape[1]
            below = host_to_device(self.text_boundary[torch.as_tensor(prompts), :width],
                                   self.device)
            top = model.text_top(below, tokens, self.text_top_layers)
            return self._class_means(top, len(ids))
        return self._encode_texts(model, class_ids)

    def _encode_texts(self, model: DualEncoder, class_ids: np.ndarray,
                      encode: frozen_engine.TextTower | None = None) -> torch.Tensor:
        """One embedding a class; under a prompt ensemble, the mean of its prompts' normalised
        embeddings (through `encode`, by default the text tower as it is, trainable or not)."""
        ids = np.asarray(class_ids)
        encode = encode or model.encode_texts
        rows = self._prompt_rows(ids)
        if self.device.type == "cpu" or len(rows) <= PROMPT_CHUNK:
            return self._class_means(encode(self._tokens(rows)), len(ids))
        # on a GPU, in chunks of prompts (1,000 classes x 80 templates at once would not fit);
        # a CPU encodes them at once, as it always has (its numbers depend on the batch)
        parts = [encode(self._tokens(rows[i : i + PROMPT_CHUNK]))
                 for i in range(0, len(rows), PROMPT_CHUNK)]
        return self._class_means(torch.cat(parts), len(ids))

    def _prompt_rows(self, class_ids: np.ndarray) -> np.ndarray:
        """The rows of `tokens` that hold these classes' prompts (`per_class` a class)."""
        t = self.per_class
        return (class_ids[:, None] * t + np.arange(t)).ravel() if t > 1 else class_ids

    def _class_means(self, embeddings: torch.Tensor, n: int) -> torch.Tensor:
        """Per class, the mean of its prompts' normalised embeddings (one prompt: as it is)."""
        if self.per_class == 1:
            return embeddings
        unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        return unit.view(n, self.per_class, -1).mean(1)

    def _tokens(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """These prompts' tokens, cut to the longest of them (known on the host: no wait for
        the device)."""
        rows = np.asarray(rows)
        tokens = {k: v[host_to_device(rows, self.device)] for k, v in self.tokens.items()}
        if self.token_lengths is not None:
            width = int(self.token_lengths[rows].max())
            tokens = {k: v[:, :width] for k, v in tokens.items()}
        return tokens


def _held(path: Path | None) -> np.ndarray | None:
    """Which images a features cache file holds, or None where there is none. One .npz holds the
    rows and this mask, so the mask is never newer or older than the rows; an .npy of an
    earlier version holds every image."""
    if path is None:
        return None
    if path.exists():
        with np.load(path) as stored:
            return stored["have"]
    legacy = path.with_suffix(".npy")
    if legacy.exists():
        return np.ones(len(np.load(legacy, mmap_mode="r")), dtype=bool)
    return None


def _stored_features(path: Path) -> np.ndarray:
    if path.exists():
        with np.load(path) as stored:
            return stored["features"]
    return np.load(path.with_suffix(".npy"))


def _write_features(path: Path, features: torch.Tensor, have: np.ndarray) -> None:
    """Written beside and renamed over: a reader sees the old file or the new, whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    with writing(path, CACHE_HINT):
        try:
            np.savez(tmp, features=features.cpu().numpy(), have=have)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def freeze_backbone(model: DualEncoder) -> None:
    """Stop gradients into the image backbone (its outputs are cached instead)."""
    for p in model.image_backbone_parameters():
        p.requires_grad_(False)


def freeze_except(tower, top) -> list[torch.nn.Parameter]:
    """Stop gradients into `tower`'s parameters other than `top`'s; returns those frozen."""
    keep = {id(p) for p in top}
    frozen = [p for p in tower if id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    return frozen
