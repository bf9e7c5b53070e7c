"""A labelled image dataset over the uint8 cache, and the Pool a split offers (the protocols,
`mamf.protocols`, say which)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mamf.data.cache import load_or_build
from mamf.data.folder import scan_folder
from mamf.data.prompts import (
    DEFAULT_TEMPLATE,
    LABEL_TO_TEXT,
    class_prompts,
    ensemble_prompts,
    prompt_file,
    resolve_templates,
)
from mamf.system.errors import MamfError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def group_labels(groups) -> np.ndarray:
    """[len(g0) zeros, len(g1) ones, ...]: the label of every image of groups laid end to end."""
    return np.concatenate([np.full(len(g), i, dtype=np.int64) for i, g in enumerate(groups)])


@dataclass(frozen=True)
class Pool:
    """What one split offers: global class ids and, for each, its image indices in file order."""

    classes: np.ndarray
    images: tuple[np.ndarray, ...]

    def all_images(self) -> tuple[np.ndarray, np.ndarray]:
        """(image indices, position of each image's class in `classes`)."""
        return np.concatenate(self.images), group_labels(self.images)


class ImageDataset:
    """Classes, prompts and images (a memory-mapped uint8 array [M, S, S, 3]) of one folder."""

    def __init__(self, name: str, root: Path, classes: list[str], prompts: list[str],
                 images: np.ndarray, class_images: list[np.ndarray], file_names: list[str]):
        self.name = name
        self.root = root
        self.classes = classes
        self.prompts = prompts
        self.images = images
        self.class_images = class_images
        self.file_names = file_names
        # per class, its prompts under every template of an ensemble (None: one prompt a class)
        self.ensemble: list[list[str]] | None = None
        # what gave the prompts (rows record it): the data's label_to_text.json, or the
        # config's `template` or `templates`
        self.prompt_source = "template"

    @classmethod
    def load(cls, root: str | Path, image_size: int, subdataset: str | None = None,
             template: str = DEFAULT_TEMPLATE,
             templates: list[str] | None = None) -> ImageDataset:
        """`templates`: an ensemble (`data.templates`), used instead of `template`."""
        scan = scan_folder(root, subdataset)
        scan.warn_skipped()
        templates = resolve_templates(templates)
        ensemble = ensemble_prompts(scan.root, scan.classes, templates, scan.top) \
            if templates else None
        prompts = [group[0] for group in ensemble] if ensemble else \
            class_prompts(scan.root, scan.classes, template, scan.top)
        files = [f for group in scan.files for f in group]
        images, ok = load_or_build(files, image_size, name=scan.name.replace("/", "-"),
                                  workers=_threads())
        classes, kept_prompts, class_images, kept_sets, start = [], [], [], [], 0
        for k, (label, prompt, group) in enumerate(zip(scan.classes, prompts, scan.files)):
            idx = np.arange(start, start + len(group))
            start += len(group)
            idx = idx[ok[idx]]
            if len(idx) == 0:
                log.warning("label %r has no readable image: skipped", label)
                continue
            classes.append(label)
            kept_prompts.append(prompt)
            class_images.append(idx)
            kept_sets.append(ensemble[k] if ensemble else None)
        if not classes:
            raise MamfError(f"no readable images in {scan.root}")
        dataset = cls(scan.name, scan.root, classes, kept_prompts, images, class_images,
                      [f.name for f in files])
        dataset.ensemble = kept_sets if ensemble else None
        dataset.prompt_source = LABEL_TO_TEXT if prompt_file(scan.root, scan.top) else \
            "templates" if ensemble else "template"
        return dataset

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """uint8 [B, S, S, 3]; memmap reads are fastest in sorted order, so sort then un-permute."""
        indices = np.asarray(indices)
        order = np.argsort(indices, kind="stable")
        out = np.empty((len(indices), *self.images.shape[1:]), dtype=np.uint8)
        out[order] = self.images[indices[order]]
        import torch  # the pools and protocols above this module need no model framework

        return torch.from_numpy(out)


def _threads() -> int:
    """Decode on as many threads as torch computes on (PIL lets go of the GIL)."""
    import torch

    return torch.get_num_threads()
