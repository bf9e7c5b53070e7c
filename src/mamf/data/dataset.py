"""A labelled image dataset over the uint8 cache, and the Pool a split offers (the protocols,
`mamf.protocols`, say which)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mamf.data import coop_layouts
from mamf.data.cache import load_or_build
from mamf.data.coop_layouts import PROMPTS_TAG
from mamf.data.folder import printable, scan_folder
from mamf.data.prompts import (
    DEFAULT_TEMPLATE,
    LABEL_TO_TEXT,
    class_prompts,
    ensemble_prompts,
    label_text,
    prompt_file,
    resolve_templates,
)
from mamf.system.errors import MamfError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def coop_prompts(template: str, classes: list[str]) -> list[str]:
    """CoOp's prompts: the dataset's template with each class name, underscores as spaces."""
    prompts = [template.replace("{}", label_text(c)) for c in classes]
    if len(set(prompts)) < len(prompts):
        log.warning("%d classes share a prompt with another (as in CoOp's own class names)",
                    len(prompts) - len(set(prompts)))
    log.info("prompts from CoOp's template %r, e.g. %r", template, prompts[0])
    return prompts


def class_count(root: str | Path, subdataset: str | None = None) -> int:
    """How many classes the data folder has, without reading its images."""
    layout = None if subdataset else coop_layouts.recognise(Path(root).expanduser())
    if layout is not None:
        return coop_layouts.count_classes(Path(root).expanduser(), layout)
    return len(scan_folder(root, subdataset).classes)


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
        # a folder of CoOp's DATASETS.md, as read (its splits and draws); None for a plain one
        self.coop: coop_layouts.CoopData | None = None
        self.template: str | None = None  # the one template of the prompts, where rows name it

    @classmethod
    def load(cls, root: str | Path, image_size: int, subdataset: str | None = None,
             template: str = DEFAULT_TEMPLATE,
             templates: list[str] | None = None, draws=()) -> ImageDataset:
        """`templates`: an ensemble (`data.templates`), used instead of `template`. A folder of
        CoOp's DATASETS.md is read as CoOp reads it (`from_layout`); `draws`: the (shots, seed)
        pairs the caller will use (ImageNet reads only the training images they draw)."""
        layout = None if subdataset else coop_layouts.recognise(Path(root).expanduser())
        if layout is not None:
            return cls.from_layout(coop_layouts.read(Path(root).expanduser(), layout, draws),
                                   image_size, template, templates)
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

    @classmethod
    def from_layout(cls, data: coop_layouts.CoopData, image_size: int, template: str,
                    templates: list[str] | None) -> ImageDataset:
        """CoOp's class names, in its label order; its template for the dataset (the config's
        `data.template` where set to other than the default, or an ensemble, instead)."""
        layout = data.layout
        templates = resolve_templates(templates)
        own = template == DEFAULT_TEMPLATE
        if templates:
            ensemble = ensemble_prompts(data.root, data.classes, templates)
            prompts = [group[0] for group in ensemble] if ensemble else \
                class_prompts(data.root, data.classes, template)
        else:
            ensemble = None
            prompts = coop_prompts(layout.template, data.classes) if own else \
                class_prompts(data.root, data.classes, template)
        images, ok = load_or_build(data.files, image_size, name=f"coop-{layout.key}",
                                   workers=_threads())
        if not ok.all():
            bad = data.files[int(np.flatnonzero(~ok)[0])]
            raise MamfError(f"{data.root}: {int((~ok).sum())} of the images CoOp's {layout.name} "
                            f"split names are unreadable, e.g. {printable(str(bad))}")
        labels = np.full(len(data.files), -1, dtype=np.int64)
        for pairs in data.splits.values():
            for label, i in pairs:
                labels[i] = label
        class_images = [np.flatnonzero(labels == c) for c in range(len(data.classes))]
        names = [printable(str(f.relative_to(data.root))) for f in data.files]
        dataset = cls(printable(data.root.resolve().name), data.root, list(data.classes),
                      prompts, images, class_images, names)
        dataset.coop = data
        dataset.ensemble = ensemble
        if ensemble is None and own:
            dataset.prompt_source, dataset.template = PROMPTS_TAG, layout.template
        else:
            dataset.prompt_source = LABEL_TO_TEXT if prompt_file(data.root) else \
                "templates" if ensemble else "template"
        return dataset

    def row_fields(self) -> dict:
        """What a row records of a CoOp layout: which of CoOp's datasets, and its template."""
        if self.coop is None:
            return {}
        return {"coop_dataset": self.coop.layout.name,
                **({"template": self.template} if self.template else {})}

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
