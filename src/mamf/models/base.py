"""The dual-encoder interface every model implements (CLIP, the offline default, the tiny test model).

Methods, the loss and the meta-test only ever talk to this interface, so a new model family is one
new file. Images arrive as uint8 tensors [B, H, W, 3] already resized to `image_size` by the image
cache; `preprocess` turns them into the float input the image tower expects.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn


class DualEncoder(nn.Module):
    """An image tower and a text tower that embed into one space, plus a learned temperature.

    Subclasses set `image_size`, `image_mean`, `image_std`, own a parameter `log_logit_scale`
    (the natural log of the logit scale, as in CLIP) and implement `tokenize`, `image_backbone`,
    `image_head` and `encode_texts`. Embeddings need not be normalised; the loss normalises them.
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

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def image_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image tower up to its projection head; frozen-backbone training caches this output."""
        raise NotImplementedError

    def image_backbone_parameters(self):
        """The parameters `image_backbone` uses, frozen when its outputs are cached."""
        raise NotImplementedError

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        """Maps backbone features to the joint embedding space."""
        raise NotImplementedError

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.image_backbone(pixel_values))

    def text_parameters(self):
        """The parameters `encode_texts` uses, frozen when text embeddings are cached."""
        raise NotImplementedError

    # -- partial unfreezing (train.unfreeze_image_blocks / unfreeze_text_layers) ---------------
    # A tower splits k blocks from its top: `bottom(x, k)` gives the boundary activations, which
    # are cached, and `top(boundary, k)` the tower's output, trained. k = 0: the bottom is the
    # whole tower and the top the identity; k = the block count: the bottom is the stem (the
    # embeddings) alone.

    def image_blocks(self) -> int:
        """How many blocks the image tower has: the largest `unfreeze_image_blocks`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be partially unfrozen")

    def image_bottom(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        """The image tower below its last k blocks: the boundary activations."""
        raise NotImplementedError

    def image_top(self, boundary: torch.Tensor, k: int) -> torch.Tensor:
        """The last k blocks and what follows them, up to `image_backbone`'s output."""
        raise NotImplementedError

    def image_top_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters `image_top(., k)` uses (the backbone's others are the frozen bottom)."""
        raise NotImplementedError

    def text_layers(self) -> int:
        """How many layers the text tower has: the largest `unfreeze_text_layers`."""
        raise NotImplementedError(f"{type(self).__name__} cannot be partially unfrozen")

    def text_bottom(self, tokens: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        """Hidden states [B, T, D] below the last k layers (k = 0: `encode_texts`)."""
        raise NotImplementedError

    def text_top(self, boundary: torch.Tensor, tokens: dict[str, torch.Tensor],
                 k: int) -> torch.Tensor:
        """The last k layers over `boundary`, masked and pooled by `tokens`: `encode_texts`."""
        raise NotImplementedError

    def text_top_parameters(self, k: int) -> list[nn.Parameter]:
        """The parameters `text_top(., ., k)` uses (`text_parameters`' others are frozen)."""
        raise NotImplementedError

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    # -- prompt learning (CoOp, CoCoOp): the text tower over input embeddings ------------------

    def text_input_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """The word embeddings [B, T, W] of `tokens`, before positions are added: what a learned
        prompt context replaces, position by position."""
        raise NotImplementedError(f"{type(self).__name__}'s text tower cannot take input "
                                  "embeddings")

    def encode_text_embeddings(self, embeddings: torch.Tensor,
                               tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """`encode_texts` with `embeddings` [B, T, W] in place of the word embeddings of
        `tokens`, which still give the attention mask and the pooling position."""
        raise NotImplementedError(f"{type(self).__name__}'s text tower cannot take input "
                                  "embeddings")

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

    def head_parameters(self):
        """The projection heads `reset_heads` replaces (trained beside LoRA when random)."""
        raise NotImplementedError(f"{type(self).__name__} has no projection heads")

    def reset_heads(self, generator: torch.Generator) -> None:
        """Replace the projection heads by fresh random ones (the official code's `heads=random`)."""
        raise NotImplementedError(f"{type(self).__name__} has no projection heads to reset")

    def text_tokenizer(self):
        """(the transformers tokenizer, the keywords `tokenize` calls it with), which an export
        saves and records so that prompts are tokenised there as here; None where `tokenize`
        is no transformers tokenizer."""
        return None

    def transformers_model(self):
        """The transformers `PreTrainedModel` this encoder is (for `mamf export --format hf` and
        `peft`), or None for a model with no standard transformers form."""
        return None

    def describe(self) -> dict:
        """A JSON-able description of the model (its name and family), which the LoRA adapters
        and exports record beside the weights; loading a run rebuilds the model from its config."""
        raise NotImplementedError


def parameters_digest(parameters) -> str:
    """sha256 of the parameters' values in order: names a cache by the weights it came from."""
    h = hashlib.sha256()
    with torch.no_grad():
        for p in parameters:
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()

