"""Any transformers `CLIPModel` (a local folder or, where there is network, a hub id) as a DualEncoder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mamf.models import split
from mamf.models.base import (
    DualEncoder,
    ProjectionHeads,
    PromptLearnable,
    SplitImageTower,
    SplitTextTower,
    TransformersForm,
)
from mamf.models.registry import register_family
from mamf.system.errors import MamfError, shown


class HFClip(DualEncoder, SplitImageTower, SplitTextTower, PromptLearnable, ProjectionHeads,
             TransformersForm):
    """Wraps a `transformers.CLIPModel` and its tokenizer: every capability.

    `tokenizer` is a `_HFTokenizer`: a transformers tokenizer and the keywords it is called
    with, mapping a list of strings to a dict with `input_ids` and `attention_mask`.
    """

    # CLIP-LoRA's (Zanella & Ben Ayed 2024): the attention's query, key and value, both towers
    lora_targets = ("q_proj", "k_proj", "v_proj")

    def __init__(self, clip, tokenizer, name: str, image_mean=None, image_std=None):
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = int(clip.config.vision_config.image_size)
        if image_mean is not None:
            self.image_mean = tuple(image_mean)
        if image_std is not None:
            self.image_std = tuple(image_std)
        # CLIPModel already owns the learned temperature; expose it under the interface's name.
        self.log_logit_scale = clip.logit_scale

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(list(texts))
        device = self.log_logit_scale.device
        return {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}

    def image_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.vision_model(pixel_values=pixel_values).pooler_output

    def image_backbone_parameters(self):
        return self.clip.vision_model.parameters()

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.clip.visual_projection(features)

    def text_parameters(self):
        return [*self.clip.text_model.parameters(), *self.clip.text_projection.parameters()]

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = self.clip.text_model(**tokens).pooler_output
        return self.clip.text_projection(pooled)

    def text_input_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.clip.text_model.embeddings.token_embedding(tokens["input_ids"])

    def encode_text_embeddings(self, embeddings: torch.Tensor,
                               tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Position embeddings added as the tower adds them, then its own causal mask, layers,
        final norm and pooling at the EOS position of `tokens` (the whole tower as the top)."""
        boundary = self.clip.text_model.embeddings(inputs_embeds=embeddings)
        return self.text_top(boundary, tokens, self.text_layers())

    def head_parameters(self):
        return [*self.clip.visual_projection.parameters(), *self.clip.text_projection.parameters()]

    # -- partial unfreezing: a tower's blocks are its encoder layers; the image boundary is
    # [tokens, width] per image, the text boundary [tokens, width] per prompt

    def image_blocks(self) -> int:
        return len(self.clip.vision_model.encoder.layers)

    def image_bottom(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return self.image_backbone(pixel_values)
        tower = self.clip.vision_model
        n = self.image_blocks()
        with split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", 0, n - k)):
            return tower(pixel_values=pixel_values).last_hidden_state

    def image_top(self, boundary: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return boundary
        tower = self.clip.vision_model
        n = self.image_blocks()
        with split.swapped(tower, embeddings=split.Given(boundary), pre_layrnorm=nn.Identity()), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", n - k)):
            return tower(pixel_values=boundary).pooler_output

    def image_top_parameters(self, k: int) -> list[nn.Parameter]:
        tower = self.clip.vision_model
        n = self.image_blocks()
        return split.parameters(*tower.encoder.layers[n - k:], tower.post_layernorm) if k else []

    def text_layers(self) -> int:
        return len(self.clip.text_model.encoder.layers)

    def text_bottom(self, tokens: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        if k == 0:
            return self.encode_texts(tokens)
        tower = self.clip.text_model
        n = self.text_layers()
        with split.swapped(tower, final_layer_norm=nn.Identity()), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", 0, n - k)):
            return tower(**tokens).last_hidden_state

    def text_top(self, boundary: torch.Tensor, tokens: dict[str, torch.Tensor],
                 k: int) -> torch.Tensor:
        if k == 0:
            return boundary
        tower = self.clip.text_model
        n = self.text_layers()
        with split.swapped(tower, embeddings=split.Given(boundary)), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", n - k)):
            pooled = tower(**tokens).pooler_output
        return self.clip.text_projection(pooled)

    def text_top_parameters(self, k: int) -> list[nn.Parameter]:
        tower = self.clip.text_model
        n = self.text_layers()
        return split.parameters(*tower.encoder.layers[n - k:], tower.final_layer_norm,
                                self.clip.text_projection) if k else []

    def reset_heads(self, generator: torch.Generator) -> None:
        for head in (self.clip.visual_projection, self.clip.text_projection):
            bound = 1.0 / head.in_features**0.5
            with torch.no_grad():
                fresh = torch.empty(head.weight.shape, dtype=head.weight.dtype,
                                    device=generator.device)
                head.weight.copy_(fresh.uniform_(-bound, bound, generator=generator))

    def transformers_model(self):
        return self.clip

    def text_tokenizer(self):
        return self.tokenizer.tokenizer, self.tokenizer.kwargs

    def describe(self) -> dict:
        return {"name": self.name}


class _HFTokenizer:
    """Adapts a transformers tokenizer to the `texts -> dict of tensors` callable HFClip expects."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def kwargs(self) -> dict:
        return {"padding": "longest", "truncation": True, "max_length": self.max_length}

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, **self.kwargs, return_tensors="pt"))


@register_family("clip", "a transformers CLIPModel (local folder, or a hub id with network)")
def load_hf_clip(name_or_path: str) -> HFClip:
    """Load a CLIPModel and its tokenizer from a local folder or a hub id, with one-line errors.

    Weights come from safetensors only: a pickled `pytorch_model.bin` is refused, never loaded.
    """
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, CLIPModel

    path = Path(name_or_path).expanduser()
    pre = None
    if path.exists():
        if not (path / "config.json").is_file():
            raise MamfError(f"model folder {path} has no config.json: not a transformers CLIP model")
        model_type = _json_object(path / "config.json").get("model_type")
        if model_type != "clip":
            raise MamfError(f"model folder {path} holds a {shown(model_type)} model, not a CLIP "
                            "model")
        if not any(path.glob("*.safetensors")):
            pickled = [p.name for p in path.glob("*.bin")]
            raise MamfError(f"model folder {path} has no model.safetensors" +
                            (f" (only the pickle {pickled[0]}, which mamf never loads: convert "
                             "it to safetensors)" if pickled else ""))
        if (path / "preprocessor_config.json").is_file():
            pre = _json_object(path / "preprocessor_config.json")
        source = str(path)
    else:
        source = name_or_path
    check_tokenizer(name_or_path)
    try:
        clip = CLIPModel.from_pretrained(source, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MamfError(f"cannot load CLIP model {name_or_path!r}: {first}") from None
    mean, std = (pre.get("image_mean"), pre.get("image_std")) if pre else (None, None)
    for key, value in (("image_mean", mean), ("image_std", std)):
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise MamfError(f"model folder {path}: preprocessor_config.json {key} must be three "
                            f"numbers, got {shown(value)}")
    max_len = int(clip.config.text_config.max_position_embeddings)
    return HFClip(clip, _HFTokenizer(tokenizer, max_len), name=name_or_path, image_mean=mean,
                  image_std=std)


# what a transformers tokenizer is saved as (fast, BPE, SentencePiece, WordPiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt", "sentencepiece.bpe.model")


def check_tokenizer(name_or_path: str) -> None:
    """Refuse a model folder with no tokenizer files: transformers would build a placeholder
    with an empty vocabulary, every prompt would become the same tokens and zero-shot would
    sit at chance, silently."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise MamfError(f"model folder {path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}"
                        "): copy the model's tokenizer into it")


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        raise MamfError(f"model folder {path.parent}: unreadable {path.name} "
                        f"({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise MamfError(f"model folder {path.parent}: {path.name} is not a JSON object")
    return data
