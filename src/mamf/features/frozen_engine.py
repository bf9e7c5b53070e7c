"""Where a frozen tower's outputs are computed: onnxruntime on the CPU, PyTorch elsewhere.

These outputs are computed once per image and cached, and on a CPU that one-off pass is most of a
frozen-tower run: eager PyTorch runs EfficientNet-Lite0 at a fraction of the machine's matmul rate,
an inference engine at most of it (bench/frozen.py). So on the CPU, in fp32, the backbone is
exported once with `torch.onnx.export` into the cache folder (keyed by its weights) and run by
onnxruntime's CPU provider with torch's thread count. Its outputs match PyTorch's within 1e-4 and
do not depend on the thread count, so torchrun's ranks still gather one process's bits.

Partial unfreezing (`train.unfreeze_image_blocks: k`) caches the tower below its last k blocks the
same way: that bottom part is exported and run here, named by k and by its own weights.

A frozen text tower (`train.freeze_text_tower`) goes the same way: `model.encode_texts` over the
tokens (batch and sequence length dynamic), named by the text weights and checked on the dataset's
own prompts, among them a batch and a length other than those it was traced with (so a graph that
fixed a shape, or an attention mask's branch, while it was traced is caught before it is cached).

PyTorch stays where onnxruntime is not installed, on a GPU (bf16), under bf16 autocast, for a model
in training mode, and wherever the export fails or its outputs disagree with PyTorch's (logged
once). `MAMF_FROZEN_ENGINE=torch` forces PyTorch.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mamf.data.cache import cache_root, third_party_caches
from mamf.models.base import DualEncoder, parameters_digest
from mamf.system import denormals
from mamf.system.io import atomic_write_bytes

log = logging.getLogger(__name__)

ENV = "MAMF_FROZEN_ENGINE"
ONNXRUNTIME, TORCH = "onnxruntime", "torch"
OPSET = 17
CHECK_TOLERANCE = 1e-4
_logged: set[str] = set()

Backbone = Callable[[torch.Tensor], torch.Tensor]
TextTower = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def _log_once(message: str, level: int = logging.WARNING) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)


def weights_digest(model: DualEncoder, parameters=None) -> str:
    """A hash of the image backbone's exact weights, or of `parameters` (the frozen bottom's)
    where given (names them in cache files)."""
    return parameters_digest(model.image_backbone_parameters() if parameters is None else parameters)


def text_digest(model: DualEncoder) -> str:
    """A hash of the text tower's exact weights (names its exported graph)."""
    return parameters_digest(model.text_parameters())


def engine_for(model: DualEncoder, device: torch.device, precision: str) -> str:
    """ONNXRUNTIME where it can serve (CPU, fp32, eval mode, installed, not turned off); TORCH
    otherwise. Cheap: nothing is exported here."""
    if os.environ.get(ENV, "").strip().lower() == TORCH:
        return TORCH
    if device.type != "cpu" or precision != "fp32" or model.training:
        return TORCH
    third_party_caches()
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        _log_once("onnxruntime is not installed: frozen-tower outputs are computed with PyTorch "
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


class _TextTower(torch.nn.Module):
    """`model.encode_texts` over the tokens named `names`, as a module's forward, for the
    exporter (which takes positional tensors, not a dict)."""

    def __init__(self, model: DualEncoder, names: list[str]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model.encode_texts(dict(zip(self.names, tensors)))


def _export(module: torch.nn.Module, example: tuple[torch.Tensor, ...],
            dynamic_axes: dict[str, dict[int, str]]) -> bytes:
    """`module` as an ONNX graph whose inputs are named by `dynamic_axes` (in order, then the
    output "out"); the exporter restores the module's training mode."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and constant-folding notes
        torch.onnx.export(module, example, buffer, dynamo=False, opset_version=OPSET,
                          input_names=list(dynamic_axes), output_names=["out"],
                          dynamic_axes={**dynamic_axes, "out": {0: "batch"}})
    return buffer.getvalue()


def _session(graph: bytes):
    third_party_caches()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    with denormals.kept():  # creating a session clears the thread's flush-to-zero mode
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _runner(session) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """The graph as a function of its named input tensors (floats go in as float32, integers as
    int64); an input the exporter dropped as unused is left out."""
    names = [i.name for i in session.get_inputs()]

    def run(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        feed = {}
        for name in names:
            t = tensors[name].detach().cpu()
            dtype = np.float32 if t.is_floating_point() else np.int64
            feed[name] = np.ascontiguousarray(t.numpy(), dtype=dtype)
        return torch.from_numpy(session.run(None, feed)[0])
    return run


def _agrees(module: torch.nn.Module, run, checks: list[dict[str, torch.Tensor]]) -> bool:
    """onnxruntime's outputs match the module's on every input of `checks` (tracing can bake in
    what a forward decides from its inputs, or their shapes; this catches it)."""
    with torch.no_grad():
        return all(torch.allclose(run(c), module(*c.values()).float(), rtol=CHECK_TOLERANCE,
                                  atol=CHECK_TOLERANCE) for c in checks)


def _on_onnxruntime(model: DualEncoder, path: Path, module: torch.nn.Module,
                    example: dict[str, torch.Tensor], dynamic_axes: dict[str, dict[int, str]],
                    checks: list[dict[str, torch.Tensor]], what: str, outputs: str):
    """`module` on onnxruntime: the graph at `path`, or exported from `example`, checked against
    PyTorch on `checks` and written there. None (and one log line) when it cannot be exported or
    disagrees: `what` names the part, `outputs` what PyTorch then computes."""
    try:
        if path.exists():
            return _runner(_session(path.read_bytes()))
        graph = _export(module, tuple(example.values()), dynamic_axes)
        run = _runner(_session(graph))
        if not _agrees(module, run, checks):
            _log_once(f"{type(model).__name__}: onnxruntime's outputs differ from PyTorch's; "
                      f"{outputs} are computed with PyTorch")
            return None
        atomic_write_bytes(path, graph)
        return run
    except Exception as e:  # any exporter or runtime failure: PyTorch still works
        first = (str(e).strip().splitlines() or [""])[0][:200]
        _log_once(f"{type(model).__name__}: no ONNX export of the {what} "
                  f"({type(e).__name__}: {first}); {outputs} are computed with PyTorch")
        return None


def _graph_path(model: DualEncoder, part: str, weights: str) -> Path:
    return cache_root() / "onnx" / f"{type(model).__name__}{part}-{weights[:20]}-" \
                                   f"torch{torch.__version__}-opset{OPSET}.onnx"


def onnx_backbone(model: DualEncoder, weights: str, top_blocks: int = 0) -> Backbone | None:
    """`model.image_backbone` (`top_blocks` k > 0: the tower below its last k blocks, whose
    weights `weights` names) on onnxruntime, exported once into the cache folder; None (and one
    log line) when it cannot be exported or disagrees with PyTorch."""
    part = f"-below{top_blocks}" if top_blocks else ""
    module = _Backbone(model, top_blocks).train(model.training)
    size = model.image_size
    pixels = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    run = _on_onnxruntime(model, _graph_path(model, f"{part}-{size}", weights), module,
                          {"pixels": torch.zeros(2, 3, size, size)}, {"pixels": {0: "batch"}},
                          [{"pixels": pixels}], "image backbone", "frozen image features")
    return None if run is None else (lambda px: run({"pixels": px}))


def onnx_text_tower(model: DualEncoder, weights: str,
                    chunks: list[dict[str, torch.Tensor]]) -> TextTower | None:
    """`model.encode_texts` (text weights named by `weights`) on onnxruntime, exported once into
    the cache folder and checked on `chunks`, real prompts' tokens as they will be encoded; None
    (and one log line) when it cannot be exported or disagrees with PyTorch."""
    names = list(chunks[0])
    module = _TextTower(model, names).train(model.training)
    # traced on 3 prompts one token short of the first chunk's length, checked on 5 at full
    # length besides the real chunks: both dynamic axes are exercised before the graph is kept
    width = next(iter(chunks[0].values())).shape[1]
    example = _rows(chunks[0], 3, max(1, width - 1))
    checks = [*chunks[:2], chunks[-1], _rows(chunks[0], 5, width)]
    return _on_onnxruntime(model, _graph_path(model, "-text", weights), module, example,
                           {n: {0: "batch", 1: "tokens"} for n in names}, checks, "text tower",
                           "frozen text embeddings")


def _rows(tokens: dict[str, torch.Tensor], n: int, width: int) -> dict[str, torch.Tensor]:
    """n rows of `tokens` (repeated where it has fewer), cut to `width` tokens."""
    index = torch.arange(n) % next(iter(tokens.values())).shape[0]
    return {k: v[index.to(v.device), :width] for k, v in tokens.items()}
