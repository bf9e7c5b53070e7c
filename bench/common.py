"""Shared set-up for the benchmarks: models by name, a generated image folder, timing."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

from mamf.models import load_model  # noqa: E402


def vit_b32_random():
    """CLIP ViT-B/32 at full size, randomly initialised (no weights can be downloaded here)."""
    from transformers import CLIPConfig, CLIPModel

    from mamf.models.hf_clip import HFClip
    from mamf.models.tiny import EOS, ByteTokenizer

    config = CLIPConfig(text_config={"eos_token_id": EOS, "max_position_embeddings": 77})
    torch.manual_seed(0)
    return HFClip(CLIPModel(config).eval(), ByteTokenizer(), name="clip-vit-b32-random")


def model_by_name(name: str):
    return vit_b32_random() if name == "vit-b32-random" else load_model(name)


def image_folder(n_classes: int = 10, per_class: int = 20) -> Path:
    from conftest import make_folder

    root = Path(tempfile.mkdtemp(prefix="mamf-bench-"))
    os.environ.setdefault("MAMF_CACHE_DIR", str(root / "cache"))
    return make_folder(root / "data", n_classes=n_classes, per_class=per_class, size=64)


def whole_batch(ds, batch_size: int, seed: int = 0):
    """A classical minibatch (all classes as candidates) of `batch_size` random images."""
    import numpy as np

    from mamf.data.dataset import group_labels
    from mamf.methods.finetune import Batch

    idx = np.random.default_rng(seed).choice(len(ds.images), batch_size, replace=False)
    labels = group_labels(ds.class_images)[idx]
    return Batch(idx, labels, np.arange(ds.n_classes))


def timed(fn, repeats: int, warmup: int = 1, device: torch.device | None = None) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs; on a GPU `device`,
    each run waits for the device to finish."""
    def run():
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per function, the functions run in turn so that noise hits all alike."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, repeats, warmup).items()}


def interleaved_samples(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Every run's seconds per function, the functions run in turn."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times
