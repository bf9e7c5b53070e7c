"""The dual-encoder interface: what every model family gives, and the capabilities some add.

Methods, the loss and the meta-test only ever talk to this interface, so a new model family is one
new file. `DualEncoder` holds what every family must give (abstract: a subclass that misses one
cannot be instantiated, and Python's TypeError names what is missing); each optional part is a
capability mixin that a family lists among its bases and that callers ask for with `isinstance`:

| mixin | what it lets a run do |
|---|---|
| `SplitImageTower` | `train.unfreeze_image_blocks: k`, the image tower's last k blocks trained |
| `SplitTextTower` | `train.unfreeze_text_layers: k`, the text tower's last k layers trained |
| `PromptLearnable` | CoOp and CoCoOp: the text tower run over learned input embeddings |
| `ProjectionHeads` | `train.heads=random`, and ProLIP (which fine-tunes the image head) |
| `TransformersTokenizer` | every `mamf export` (the tokenizer is saved beside the model) |
| `TransformersForm` | `mamf export --format hf` and `--format peft` |

A setting that needs a capability the model lacks is refused with one line (`require`) before
the capability is used: heads and partial unfreezing when the model is prepared, CoOp and CoCoOp
when their context is put on, ProLIP at its first task, an export before anything is written.
Images arrive as uint8 tensors [B, H, W, 3] already resized to `image_size` by
the image cache; `preprocess` turns them into the float input the image tower expects.
"""

from __future__ import annotations

import abc
import hashlib
import math
from typing import Any

import torch
from torch import nn

from mamf.system.errors import MamfError


class DualEncoder(nn.Module, abc.ABC):
    """An image tower and a text tower that embed into one space, plus a learned temperature.

    To add a family, subclass it (and the capability mixins the family supports), set
    `image_size`, `image_mean`, `image_std` (the pixel statistics the image tower was trained
    with), own a parameter `log_logit_scale` (the natural log of the logit scale, as in CLIP), and
    implement the abstract methods:

    - `tokenize(texts)`: list of str -> dict of int tensors on the model's device (what
      `encode_texts` reads: `input_ids`, and `attention_mask` where the tower takes one).
    - `image_backbone(pixel_values)`: float [B, 3, H, W] -> [B, F], the image tower up to its
      projection head (frozen-backbone training caches this output).
    - `image_backbone_parameters()`: the parameters `image_backbone` uses.
    - `image_head(features)`: [B, F] -> [B, D], backbone features into the joint space.
    - `encode_texts(tokens)`: `tokenize`'s dict -> [B, D] text embeddings.
    - `text_parameters()`: the parameters `encode_texts` uses.
    - `describe()`: a JSON-able dict with at least the model's `name`, recorded beside adapters.

    Embeddings need not be normalised; the loss normalises them. The loss is CLIP's (scaled
    cosines, softmax cross-entropy) unless the family overrides `task_logits`, `task_loss`,
    `chance_loss` and `loss_parameters` (SigLIP does). `lora_targets` names the layers
    `train.adapter=lora` adapts by default.

    Example, a family that wraps a transformers `CLIPModel` with no optional capability (every
    method but CoOp, CoCoOp and ProLIP trains and evaluates it; add `ProjectionHeads` and the
    others to its bases, with their methods, for more); `models/registry.py`'s
    `register_builtin` or `register_family` makes it loadable by name:

        class Plain(DualEncoder):
            def __init__(self, clip, tokenizer):
                super().__init__()
                self.clip, self.tokenizer = clip, tokenizer
                self.image_size = clip.config.vision_config.image_size
                self.log_logit_scale = clip.logit_scale

            def tokenize(self, texts):
                return dict(self.tokenizer(texts, padding=True, return_tensors="pt"))

            def image_backbone(self, pixel_values):
                return self.clip.vision_model(pixel_values=pixel_values).pooler_output

            def image_backbone_parameters(self):
                return self.clip.vision_model.parameters()

            def image_head(self, features):
                return self.clip.visual_projection(features)

            def encode_texts(self, tokens):
                return self.clip.text_projection(self.clip.text_model(**tokens).pooler_output)

            def text_parameters(self):
                return [*self.clip.text_model.parameters(),
                        *self.clip.text_projection.parameters()]

            def describe(self):
                return {"name": "plain-clip"}
    """

    image_size: int = 224
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    log_logit_scale: nn.Parameter
    # the layers `train.adapter=lora` adapts when `train.lora_targets` is empty (names of linear
    # layers or 1x1 convolutions, matched as peft matches them: the name or its last parts)
    lora_targets: tuple[str, ...] = ()

    def preprocess(self, images: torch.Tensor, contiguous: bool = False) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> float [B, 3, H, W] normalised with the model's own statistics.

        By default the result keeps the permuted view's channels-last strides, which PyTorch's
        convolutions have always been given here (their bits depend on the layout).
        `contiguous`: the same values in NCHW memory, what an inference engine reads; the
        uint8 images are laid out first and the arithmetic done in place, about twice as fast."""
        x = images.to(self.log_logit_scale.device).permute(0, 3, 1, 2)
        mean, std = self._statistics(x.device)
        if contiguous:
            return x.contiguous().float().div_(255.0).sub_(mean).div_(std)
        x = x.float().div_(255.0)
        return (x - mean) / std

    def _statistics(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalisation's mean and std [1, 3, 1, 1] on `device`, made once a device (a copy
        to a GPU each batch would make the host wait)."""
        key = (device, self.image_mean, self.image_std)
        held = self.__dict__.setdefault("_held_statistics", {})
        if key not in held:
            held[key] = tuple(torch.tensor(v, device=device).view(1, 3, 1, 1)
                              for v in (self.image_mean, self.image_std))
        return held[key]

    @abc.abstractmethod
    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> the token tensors `encode_texts` reads, on the model's device."""

    @abc.abstractmethod
    def image_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image tower up to its projection head; frozen-backbone training caches this output."""

    @abc.abstractmethod
    def image_backbone_parameters(self):
        """The parameters `image_backbone` uses, frozen when its outputs are cached."""

    @abc.abstractmethod
    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        """Maps backbone features to the joint embedding space."""

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`image_head(image_backbone(pixel_values))`: [B, 3, H, W] -> [B, D]."""
        return self.image_head(self.image_backbone(pixel_values))

    @abc.abstractmethod
    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """`tokenize`'s dict -> [B, D] text embeddings in the joint space."""

    @abc.abstractmethod
    def text_parameters(self):
        """The parameters `encode_texts` uses, frozen when text embeddings are cached."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """A JSON-able description of the model (its `name`, and its family where it helps),
        which the LoRA adapters and exports record beside the weights; loading a run rebuilds
        the model from its config, not from this."""

    def logit_scale(self) -> torch.Tensor:
        return self.log_logit_scale.exp()

    def loss_parameters(self) -> list[nn.Parameter]:
        """The loss's own learned values (the temperature; SigLIP's bias too), trained beside
        LoRA's adapters."""
        return [self.log_logit_scale]

    def task_logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """[B, D] x [C, D] -> [B, C] logits of the model's own loss (CLIP: scaled cosines)."""
        from mamf.models.loss import task_logits

        return task_logits(self.logit_scale(), image_emb, text_emb)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The model's own training loss over `task_logits` (CLIP: softmax cross-entropy)."""
        from mamf.models.loss import cross_entropy

        return cross_entropy(logits, labels)

    def chance_loss(self, classes: int) -> float:
        """`task_loss` of a uniform guess over `classes` candidates: ln(classes) for softmax
        cross-entropy (what a run whose loss stays there learned nothing against)."""
        return math.log(classes)


# -- capabilities: a family lists those it supports among its bases -------------------------------
# Partial unfreezing (train.unfreeze_image_blocks / unfreeze_text_layers): a tower splits k blocks
# from its top; `bottom(x, k)` gives the boundary activations, which are cached, and
# `top(boundary, k)` the tower's output, trained. k = 0: the bottom is the whole tower and the top
# the identity; k = the block count: the bottom is the stem (the embeddings) alone.


class SplitImageTower(abc.ABC):
    """An image tower that splits at a block boundary: `train.unfreeze_image_blocks: k` trains
    its last k blocks over cached activations below them.

    Implement `image_blocks()` (the count), `image_bottom(pixel_values, k)` (the boundary
    activations, any shape), `image_top(boundary, k)` (from there to `image_backbone`'s output,
    so that `image_top(image_bottom(x, k), k) == image_backbone(x)` for every k) and
    `image_top_parameters(k)`. `models/split.py` runs a transformers tower's own forward over a
    slice of its layers, e.g. `class MyCLIP(DualEncoder, SplitImageTower): ...`."""

    @abc.abstractmethod
    def image_blocks(self) -> int:
        """How many blocks the image tower has: the largest `unfreeze_image_blocks`."""

    @abc.abstractmethod
    def image_bottom(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """The image tower below its last k blocks: the boundary activations."""

    @abc.abstractmethod
    def image_top(self, boundary: torch.Tensor, k: int) -> torch.Tensor:
        """The last k blocks and what follows them, up to `image_backbone`'s output."""

    @abc.abstractmethod
    def image_top_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters `image_top(., k)` uses (the backbone's others are the frozen bottom);
        [] for k = 0."""


class SplitTextTower(abc.ABC):
    """A text tower that splits at a layer boundary: `train.unfreeze_text_layers: k` trains its
    last k layers over cached hidden states below them.

    Implement `text_layers()`, `text_bottom(tokens, k)` (hidden states [B, T, D]; k = 0:
    `encode_texts`), `text_top(boundary, tokens, k)` (so that `text_top(text_bottom(t, k), t, k)
    == encode_texts(t)`) and `text_top_parameters(k)`."""

    @abc.abstractmethod
    def text_layers(self) -> int:
        """How many layers the text tower has: the largest `unfreeze_text_layers`."""

    @abc.abstractmethod
    def text_bottom(self, tokens: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """Hidden states [B, T, D] below the last k layers (k = 0: `encode_texts`)."""

    @abc.abstractmethod
    def text_top(self, boundary: torch.Tensor, tokens: dict[str, torch.Tensor],
                 k: int) -> torch.Tensor:
        """The last k layers over `boundary`, masked and pooled by `tokens`: `encode_texts`."""

    @abc.abstractmethod
    def text_top_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters `text_top(., ., k)` uses (`text_parameters`' others are frozen);
        [] for k = 0."""


class PromptLearnable(abc.ABC):
    """A text tower that runs over given input embeddings: what CoOp and CoCoOp need, whose
    learned context replaces some prompt tokens' word embeddings.

    Implement `text_input_embeddings(tokens)` and `encode_text_embeddings(embeddings, tokens)`
    so that `encode_text_embeddings(text_input_embeddings(t), t) == encode_texts(t)`."""

    @abc.abstractmethod
    def text_input_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The word embeddings [B, T, W] of `tokens`, before positions are added: what a learned
        prompt context replaces, position by position."""

    @abc.abstractmethod
    def encode_text_embeddings(self, embeddings: torch.Tensor,
                               tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """`encode_texts` with `embeddings` [B, T, W] in place of the word embeddings of
        `tokens`, which still give the attention mask and the pooling position."""


class ProjectionHeads(abc.ABC):
    """Projection heads into the joint space, separate from the towers, that can be replaced by
    fresh random ones: `train.heads=random` (the official code's) and ProLIP (which fine-tunes
    the image head's weights) need them. SigLIP's towers pool and project themselves: it has
    none.

    Implement `head_parameters()` and `reset_heads(generator)`."""

    @abc.abstractmethod
    def head_parameters(self) -> list[nn.Parameter]:
        """The projection heads' parameters (trained beside LoRA when random)."""

    @abc.abstractmethod
    def reset_heads(self, generator: torch.Generator) -> None:
        """Replace the projection heads by fresh random ones drawn from `generator` only."""


class TransformersTokenizer(abc.ABC):
    """`tokenize` is a transformers tokenizer called with fixed keywords: every `mamf export`
    saves it (and records the keywords) so that prompts are tokenised there as here.

    Implement `text_tokenizer()` -> (the `PreTrainedTokenizerBase`, the keywords `tokenize`
    calls it with, e.g. {"padding": "longest", "truncation": True, "max_length": 77})."""

    @abc.abstractmethod
    def text_tokenizer(self) -> tuple[Any, dict]:
        """(the transformers tokenizer, the keywords `tokenize` calls it with)."""


class TransformersForm(TransformersTokenizer):
    """The model is one transformers `PreTrainedModel` with `get_image_features` and
    `get_text_features` (CLIPModel, SiglipModel): `mamf export --format hf` saves it with
    `save_pretrained`, `--format peft` a LoRA run's adapters for it.

    Implement `transformers_model()` (one of the encoder's own submodules) and, as a
    `TransformersTokenizer`, `text_tokenizer()`."""

    @abc.abstractmethod
    def transformers_model(self) -> nn.Module:
        """The transformers `PreTrainedModel` this encoder wraps (a submodule of it)."""


# what a run says when a model lacks a capability, {0} the model's class
LACKING = {
    SplitImageTower: "{0}'s image tower cannot be partially unfrozen (use 0 or all)",
    SplitTextTower: "{0}'s text tower cannot be partially unfrozen (use 0 or all)",
    PromptLearnable: "{0}'s text tower cannot take input embeddings",
    ProjectionHeads: "{0} has no projection heads",
    TransformersTokenizer: "{0} has no transformers tokenizer",
    TransformersForm: "{0} has no standard transformers form (its towers are not one "
                      "transformers model)",
}


def capabilities(model: DualEncoder | type) -> tuple[type, ...]:
    """The capability mixins a model (or a family's class) supports, in `LACKING`'s order."""
    cls = model if isinstance(model, type) else type(model)
    return tuple(c for c in LACKING if issubclass(cls, c))


def require(model: DualEncoder, capability: type, needs: str) -> None:
    """Refuse, in one line, a setting (`needs`, e.g. "train.heads=random cannot go with model
    x") that the model's family cannot serve: MamfError("<needs>: <what it lacks>")."""
    if not isinstance(model, capability):
        raise MamfError(f"{needs}: {LACKING[capability].format(type(model).__name__)}")


def parameters_digest(parameters) -> str:
    """sha256 of the parameters' values in order: names a cache by the weights it came from."""
    h = hashlib.sha256()
    with torch.no_grad():
        for p in parameters:
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
