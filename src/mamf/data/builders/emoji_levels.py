"""Emoji classes grouped by how well a pretrained model already knows them (zero-shot levels).

The paper's second claim ties FOMAML's benefit to zero-shot accuracy, so it can only be judged on
data whose zero-shot accuracy ranges from chance to high. This builder ranks every emoji class by
the pretrained model's zero-shot score on the class's *Google* image (`style`), splits the ranking
into `levels` equal groups and writes group `level` (0 = least known) as a dataset of its own.
Experiments then score queries in the *Twitter* style (`data.query_match: twitter`), so the
images that set a class's level are never the ones it is scored on.

A class's score is the share of the other classes whose prompt the model ranks below the class's
own prompt for its image (1.0: its own prompt is the best match of all classes; 0.5: chance).
Against four random distractors a class of score s is recognised with probability about s^4.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from mamf.data.builders.common import (
    DATASET_MD,
    LABEL_TO_TEXT,
    BuiltDataset,
    Log,
    build_with,
    check_folder,
    check_int,
    read_manifest,
    resolve_out,
)
from mamf.data.cache import cache_root
from mamf.system.errors import MamfError, shown
from mamf.system.io import atomic_write_text

NAME = "emoji-levels"
VERSION = 1
STYLES = ("google", "twitter", "openmoji")
BATCH = 64


def class_scores(model, images: list[Path], prompts: list[str]) -> np.ndarray:
    """Per image i (of class i), the share of other classes' prompts scored below prompt i."""
    import torch

    from mamf.data.cache import decode

    model.eval()
    with torch.no_grad():
        tokens = model.tokenize(prompts)
        txt = torch.nn.functional.normalize(model.encode_texts(tokens).float(), dim=-1)
        sims = []
        for start in range(0, len(images), BATCH):
            pixels = np.stack([decode(p, model.image_size) for p in images[start:start + BATCH]])
            x = model.preprocess(torch.from_numpy(pixels))
            img = torch.nn.functional.normalize(model.encode_images(x).float(), dim=-1)
            sims.append((img @ txt.T).numpy())
    sim = np.concatenate(sims)
    own = np.diag(sim)[:, None]
    n = len(prompts)
    return ((sim < own).sum(axis=1)) / max(n - 1, 1)


def cached_scores(src: Path, model: str, style: str, labels: list[str], prompts: list[str],
                  log: Log) -> np.ndarray:
    """`class_scores` of the source's classes, kept in mamf's cache folder (`zeroshot-scores/`,
    never beside the source or the output) under a key of the source's manifest, the model name
    and the style: every level of one ranking (one build each) scores the classes once, not
    once a level."""
    key = hashlib.sha256(json.dumps([(src / ".mamf-dataset.json").read_text(encoding="utf-8"),
                                     model, style]).encode()).hexdigest()[:20]
    path = cache_root() / "zeroshot-scores" / f"{src.name}-{key}.json"
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        if kept.get("labels") == labels:
            log(f"{NAME}: using the zero-shot scores kept in {path}")
            return np.array(kept["scores"], dtype=np.float64)
    except (OSError, ValueError, AttributeError):
        pass
    from mamf.models import load_model

    log(f"{NAME}: scoring {len(labels)} classes zero-shot with {model} on their {style} image")
    scores = class_scores(load_model(model), [src / c / f"{style}.png" for c in labels], prompts)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"model": model, "style": style, "labels": labels,
                                        "scores": scores.tolist()}) + "\n")
    return scores


def _licence_of(source: Path) -> str:
    """The `## Licence` section of the source dataset's DATASET.md (these are its images)."""
    text = (source / DATASET_MD).read_text(encoding="utf-8")
    m = re.search(r"^## Licence\n\n(.*?)(?=^## )", text, flags=re.S | re.M)
    return m.group(1).strip() if m else "As the source emoji dataset's DATASET.md says."


def _source(source: str | os.PathLike | None, log: Log) -> Path:
    """The full emoji dataset: `source`, or `emoji/` in mamf's cache folder (built there, its
    downloads beside it, when absent): nothing is written outside the output folder but
    the cache."""
    if source is not None:
        root = Path(source).expanduser().absolute()
        manifest = read_manifest(root)
        if manifest is None or manifest.get("builder") != "emoji":
            raise MamfError(f"{NAME}: source {root} is not a finished emoji build "
                            "(build it with `mamf data emoji OUT`)")
        return root
    from mamf.data.builders.emoji import build_emoji

    return build_emoji(cache_root() / "emoji", log=log)


def build_emoji_levels(out: str | os.PathLike, *, log: Log = print, level: int = 0,
                       levels: int = 3, model: str = "effnet-minilm", style: str = "google",
                       source: str | os.PathLike | None = None) -> Path:
    """Write the emoji classes of zero-shot level `level` (0 = least known) of `levels` into `out`.

    `model`: the pretrained model whose zero-shot scores rank the classes (any `mamf` model name).
    `style`: which image of a class is scored for the ranking (score queries in another).
    `source`: a finished emoji build (default: `emoji/` in mamf's cache folder, built there if
    absent).
    """
    check_int(NAME, "levels", levels, minimum=2)
    check_int(NAME, "level", level, minimum=0)
    if level >= levels:
        raise MamfError(f"{NAME}: level must be below levels ({levels}), not {shown(level)}")
    if style not in STYLES:
        raise MamfError(f"{NAME}: style must be one of {', '.join(STYLES)}, not {shown(style)}")
    if not isinstance(model, str) or not model:
        raise MamfError(f"{NAME}: model must be a model name, not {shown(model)}")
    check_folder(NAME, "source", source)
    root = resolve_out(out)
    options = {"level": level, "levels": levels, "model": model, "style": style}

    def make(tmp: Path) -> BuiltDataset:
        src = _source(source, log)
        classes = json.loads((src / "classes.json").read_text(encoding="utf-8"))
        prompts = json.loads((src / LABEL_TO_TEXT).read_text(encoding="utf-8"))
        labels = sorted(classes)
        images = [src / label / f"{style}.png" for label in labels]
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise MamfError(f"{NAME}: {missing[0]} is missing; the source has no {style!r} images"
                            + (" (build emoji with openmoji=true)" if style == "openmoji" else ""))
        if len(labels) < 2 * levels:
            raise MamfError(f"{NAME}: levels={levels} cuts the source's {len(labels)} classes "
                            "into groups of fewer than 2 (a task needs 2 classes): use at most "
                            f"{len(labels) // 2} levels")
        scores = cached_scores(src, model, style, labels, [prompts[c] for c in labels], log)
        order = sorted(range(len(labels)), key=lambda i: (scores[i], labels[i]))
        groups = np.array_split(np.array(order), levels)
        chosen = sorted(int(i) for i in groups[level])
        bounds = [(float(scores[g].min()), float(scores[g].max())) for g in groups]
        kept = {}
        for i in chosen:
            label = labels[i]
            shutil.copytree(src / label, tmp / label)
            kept[label] = {**classes[label], "zeroshot_score": round(float(scores[i]), 6)}
        (tmp / "classes.json").write_text(json.dumps(kept, indent=1, ensure_ascii=False,
                                                     sort_keys=True) + "\n", encoding="utf-8")
        mean = float(np.mean(scores[chosen]))
        five_way = float(np.mean(scores[chosen] ** 4))
        table = "\n".join(f"| {k} | {len(g)} | {lo:.3f} to {hi:.3f} | {np.mean(scores[g]):.3f} |"
                          for k, (g, (lo, hi)) in enumerate(zip(groups, bounds)))
        log(f"{NAME}: level {level} of {levels}: {len(chosen)} classes, scores {bounds[level][0]:.3f}"
            f" to {bounds[level][1]:.3f} (mean {mean:.3f})")
        return BuiltDataset(
            title=f"Emoji, zero-shot level {level} of {levels} ({model}, {style} images)",
            label_to_text={c: prompts[c] for c in kept},
            source=f"The classes of the emoji dataset at `{src}` (its DATASET.md gives the npm "
                   "packages and their digests) in this level, copied with all their images.",
            licence=_licence_of(src),
            method=(
                f"Every one of the {len(labels)} emoji classes was scored zero-shot by `{model}` on "
                f"its `{style}.png`: the share of the other classes whose prompt the model's cosine "
                "similarity ranks below the class's own (0.5 is chance, 1.0 its own prompt best of "
                f"all). The classes, ordered by that score, were split into {levels} equal groups; "
                f"this is group {level} (0 = least known). Score queries in another style "
                f"(e.g. `data.support_match: {style}`, `data.query_match: twitter`"
                + (" or `google`" if style == "twitter" else "") + "), so the images that set a "
                "class's level are not the ones it is scored on.\n\n"
                "| level | classes | score range | mean score |\n|---|---|---|---|\n" + table),
            notes=(f"This level: mean score {mean:.3f}; mean score^4 {five_way:.3f} (the 5-way "
                   "zero-shot accuracy it would predict with distractors drawn from all classes "
                   "and queries in the scored style; a level's tasks draw distractors from the "
                   "level and score another style, so measure it). `classes.json` gives each "
                   "class's score (`zeroshot_score`)."),
            extra={"zeroshot": {"model": model, "style": style, "bounds": bounds,
                                "mean_score": mean}},
        )

    return build_with(NAME, root, options, log, make, version=VERSION)
