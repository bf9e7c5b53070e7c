"""Where a frozen image backbone's outputs are computed: onnxruntime on the CPU, PyTorch elsewhere.

These outputs are computed once per image and cached, and on a CPU that one-off pass is most of a
frozen-tower run: eager PyTorch runs EfficientNet-Lite0 at a fraction of the machine's matmul rate,
an inference engine at most of it (bench/frozen.py). So on the CPU, in fp32, the backbone is
exported once with `torch.onnx.export` into the cache folder (keyed by its weights) and run by
onnxruntime's CPU provider with torch's thread count. Its outputs match PyTorch's within 1e-4 and
do not depend on the thread count, so torchrun's ranks still gather one process's bits.

Partial unfreezing (`train.unfreeze_image_blocks: k`) caches the tower below its last k blocks the
same way: that bottom part is exported and run here, named by k and by its own weights.

PyTorch stays where onnxruntime is not installed, on a GPU (bf16), under bf16 autocast, for a model
in training mode, and wherever the export fails or its outputs disagree with PyTorch's (logged
once). `MAMF_FROZEN_ENGINE=torch` forces PyTorch.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from collections.abc import Callable

import numpy as np
import torch

from mamf.data.cache import cache_root
from mamf.io import atomic_write_bytes
from mamf.models.base import DualEncoder

log = logging.getLogger(__name__)

ENV = "MAMF_FROZEN_ENGINE"
ONNXRUNTIME, TORCH = "onnxruntime", "torch"
OPSET = 17
CHECK_TOLERANCE = 1e-4
_logged: set[str] = set()

Backbone = Callable[[torch.Tensor], torch.Tensor]


def _log_once(message: str, level: int = logging.WARNING) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def weights_digest(model: DualEncoder, parameters=None) -> str:
    """A hash of the image backbone's exact weights, or of `parameters` (the frozen bottom's)
    where given (names them in cache files)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for p in model.image_backbone_parameters() if parameters is None else parameters:
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def engine_for(model: DualEncoder, device: torch.device, precision: str) -> str:
    """ONNXRUNTIME where it can serve (CPU, fp32, eval mode, installed, not turned off); TORCH
    otherwise. Cheap: nothing is exported here."""
    if os.environ.get(ENV, "").strip().lower() == TORCH:
        return TORCH
    if device.type != "cpu" or precision != "fp32" or model.training:
        return TORCH
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        _log_once("onnxruntime is not installed: frozen image features are computed with PyTorch "
                  "(pip install onnxruntime onnx for several times the speed)", logging.INFO)
        return TORCH
    return ONNXRUNTIME


class _Backbone(torch.nn.Module):
    """`model.image_backbone` (or, for `top_blocks` k > 0, the tower below its last k blocks) as
    a module's forward, for the exporter."""

    def __init__(self, model: DualEncoder, top_blocks: int = 0):
        super().__init__()
        self.model = model
        self.top_blocks = top_blocks

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.top_blocks == 0:
            return self.model.image_backbone(pixels)
        return self.model.image_bottom(pixels, self.top_blocks)


def _export(model: DualEncoder, top_blocks: int = 0) -> bytes:
    wrapper = _Backbone(model, top_blocks).train(model.training)  # the exporter restores the wrapper's mode
    example = torch.zeros(2, 3, model.image_size, model.image_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
    return buffer.getvalue()


def _session(graph: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _runner(session) -> Backbone:
    def run(pixels: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {"pixels": array})[0])
    return run


def _agrees(model: DualEncoder, run: Backbone, top_blocks: int = 0) -> bool:
    """onnxruntime's outputs on a few seeded inputs match PyTorch's (tracing can bake in what
    a forward decides from its inputs; this catches it)."""
    pixels = torch.randn(3, 3, model.image_size, model.image_size,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _Backbone(model, top_blocks)(pixels).float()
    return torch.allclose(run(pixels), expected, rtol=CHECK_TOLERANCE, atol=CHECK_TOLERANCE)


def onnx_backbone(model: DualEncoder, weights: str, top_blocks: int = 0) -> Backbone | None:
    """`model.image_backbone` (`top_blocks` k > 0: the tower below its last k blocks, whose
    weights `weights` names) on onnxruntime, exported once into the cache folder; None (and one
    log line) when it cannot be exported or disagrees with PyTorch."""
    part = f"-below{top_blocks}" if top_blocks else ""
    path = cache_root() / "onnx" / f"{type(model).__name__}{part}-{model.image_size}-" \
                                   f"{weights[:20]}-torch{torch.__version__}-opset{OPSET}.onnx"
    try:
        if path.exists():
            return _runner(_session(path.read_bytes()))
        graph = _export(model, top_blocks)
        run = _runner(_session(graph))
        if not _agrees(model, run, top_blocks):
            _log_once(f"{type(model).__name__}: onnxruntime's outputs differ from PyTorch's; "
                      "frozen image features are computed with PyTorch")
            return None
        atomic_write_bytes(path, graph)
        return run
    except Exception as e:  # any exporter or runtime failure: PyTorch still works
        first = (str(e).strip().splitlines() or [""])[0][:200]
        _log_once(f"{type(model).__name__}: no ONNX export of the image backbone "
                  f"({type(e).__name__}: {first}); frozen image features are computed with PyTorch")
        return None
