"""Any transformers `SiglipModel` as a DualEncoder, and `tiny-random-siglip` for tests.

SigLIP differs from CLIP in three ways that matter here, all the model's own: its towers pool
and project themselves (the image tower's attention-pooling head, the text tower's last token
through its head), its logits carry a learned bias (scale * cos + bias), and it trains with the
pairwise sigmoid loss rather than softmax cross-entropy. `task_logits` and `task_loss` are
these, so every method that trains with the model's own loss trains SigLIP as SigLIP trained.
Its text tower was trained on prompts padded to a fixed length without an attention mask, so the
tokenizer pads to `max_length` and the mask is not passed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from mamf.models import split
from mamf.models.base import DualEncoder, PromptLearnable, SplitImageTower, SplitTextTower, TransformersForm
from mamf.models.loss import sigmoid_loss, task_logits
from mamf.models.registry import register_builtin, register_family
from mamf.system.errors import MamfError


class HFSiglip(DualEncoder, SplitImageTower, SplitTextTower, PromptLearnable, TransformersForm):
    """Wraps a `transformers.SiglipModel` and a `_FixedLengthTokenizer` (`texts ->
    {"input_ids"}`). No `ProjectionHeads`: its towers pool and project themselves."""

    lora_targets = ("q_proj", "k_proj", "v_proj")

    def __init__(self, siglip, tokenizer, name: str, image_mean=None, image_std=None):
        super().__init__()
        self.siglip = siglip
        self.tokenizer = tokenizer
        self.name = name
        self.image_size = int(siglip.config.vision_config.image_size)
        # SigLIP normalises to [-1, 1] unless its preprocessor says otherwise
        self.image_mean = tuple(image_mean) if image_mean is not None else (0.5, 0.5, 0.5)
        self.image_std = tuple(image_std) if image_std is not None else (0.5, 0.5, 0.5)
        self.log_logit_scale = siglip.logit_scale

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(list(texts))["input_ids"]
        return {"input_ids": ids.to(self.log_logit_scale.device)}

    def image_backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.siglip.vision_model(pixel_values=pixel_values).pooler_output

    def image_backbone_parameters(self):
        return self.siglip.vision_model.parameters()

    def image_head(self, features: torch.Tensor) -> torch.Tensor:
        return features  # the attention-pooling head is part of the tower's pooling

    def text_parameters(self):
        return self.siglip.text_model.parameters()

    def encode_texts(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.siglip.text_model(input_ids=tokens["input_ids"]).pooler_output

    def text_input_embeddings(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.siglip.text_model.embeddings.token_embedding(tokens["input_ids"])

    def encode_text_embeddings(self, embeddings: torch.Tensor,
                               tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Positions added as the tower adds them; its own layers, norm, last-token head."""
        tower = self.siglip.text_model
        boundary = tower.embeddings(inputs_embeds=embeddings)
        with split.swapped(tower, embeddings=split.Given(boundary)):
            return tower(input_ids=tokens["input_ids"]).pooler_output


    # -- partial unfreezing, as CLIP's: a tower's blocks are its encoder layers, the boundary
    # [tokens, width]; the top holds the last k layers, the final norm and the tower's own
    # pooling head (the image tower's attention pooling, the text tower's linear head)

    def image_blocks(self) -> int:
        return len(self.siglip.vision_model.encoder.layers)

    def image_bottom(self, pixel_values: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return self.image_backbone(pixel_values)
        tower = self.siglip.vision_model
        n = self.image_blocks()
        with split.swapped(tower, post_layernorm=nn.Identity(), head=nn.Identity()), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", 0, n - k)):
            return tower(pixel_values=pixel_values).last_hidden_state

    def image_top(self, boundary: torch.Tensor, k: int) -> torch.Tensor:
        if k == 0:
            return boundary
        tower = self.siglip.vision_model
        n = self.image_blocks()
        with split.swapped(tower, embeddings=split.Given(boundary)), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", n - k)):
            return tower(pixel_values=boundary).pooler_output

    def image_top_parameters(self, k: int) -> list[nn.Parameter]:
        tower = self.siglip.vision_model
        n = self.image_blocks()
        return split.parameters(*tower.encoder.layers[n - k:], tower.post_layernorm,
                                tower.head) if k else []

    def text_layers(self) -> int:
        return len(self.siglip.text_model.encoder.layers)

    def text_bottom(self, tokens: dict[str, torch.Tensor], k: int) -> torch.Tensor:
        if k == 0:
            return self.encode_texts(tokens)
        tower = self.siglip.text_model
        n = self.text_layers()
        with split.swapped(tower, final_layer_norm=nn.Identity(), head=nn.Identity()), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", 0, n - k)):
            return tower(input_ids=tokens["input_ids"]).last_hidden_state

    def text_top(self, boundary: torch.Tensor, tokens: dict[str, torch.Tensor],
                 k: int) -> torch.Tensor:
        if k == 0:
            return boundary
        tower = self.siglip.text_model
        n = self.text_layers()
        with split.swapped(tower, embeddings=split.Given(boundary)), \
                split.swapped(tower.encoder, layers=split.layers(tower.encoder, "layers", n - k)):
            return tower(input_ids=tokens["input_ids"]).pooler_output

    def text_top_parameters(self, k: int) -> list[nn.Parameter]:
        tower = self.siglip.text_model
        n = self.text_layers()
        return split.parameters(*tower.encoder.layers[n - k:], tower.final_layer_norm,
                                tower.head) if k else []

    def task_logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        return task_logits(self.logit_scale(), image_emb, text_emb) + \
            self.siglip.logit_bias.float()

    def loss_parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_logit_scale, self.siglip.logit_bias]

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sigmoid_loss(logits, labels)

    def chance_loss(self, classes: int) -> float:
        """The sigmoid loss of the best guess that knows nothing: every pair's probability
        1/k, so -ln(1/k) for the image's class and -ln(1 - 1/k) for each of the k - 1 others,
        ln k + (k - 1) ln(k / (k - 1)) (2 ln 2 for k = 2; about ln k + 1 for large k)."""
        import math

        return math.log(classes) + (classes - 1) * math.log(classes / (classes - 1))

    def transformers_model(self):
        return self.siglip

    def text_tokenizer(self):
        return self.tokenizer.tokenizer, self.tokenizer.kwargs

    def describe(self) -> dict:
        return {"name": self.name}


class _FixedLengthTokenizer:
    """A transformers tokenizer padding every prompt to the text tower's length, as SigLIP
    was trained."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def kwargs(self) -> dict:
        return {"padding": "max_length", "truncation": True, "max_length": self.max_length}

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, **self.kwargs, return_tensors="pt"))


@register_family("siglip", "a transformers SiglipModel (local folder, or a hub id with network)")
def load_hf_siglip(name_or_path: str) -> HFSiglip:
    """Load a SiglipModel (safetensors only) and its tokenizer, with one-line errors."""
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, SiglipModel

    from mamf.models.hf_clip import _json_object, check_tokenizer

    path = Path(name_or_path).expanduser()
    pre = None
    if path.exists():
        if not any(path.glob("*.safetensors")):
            raise MamfError(f"model folder {path} has no model.safetensors (mamf never loads "
                            "pickles)")
        if (path / "preprocessor_config.json").is_file():
            pre = _json_object(path / "preprocessor_config.json")
    check_tokenizer(name_or_path)
    try:
        siglip = SiglipModel.from_pretrained(str(path) if path.exists() else name_or_path,
                                             use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else name_or_path)
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MamfError(f"cannot load SigLIP model {name_or_path!r}: {first}") from None
    max_len = int(siglip.config.text_config.max_position_embeddings)
    return HFSiglip(siglip, _FixedLengthTokenizer(tokenizer, max_len), name=name_or_path,
                    image_mean=pre.get("image_mean") if pre else None,
                    image_std=pre.get("image_std") if pre else None)


@register_builtin("tiny-random-siglip", "small randomly initialised SigLIP built in code "
                  "(UNTRAINED; tests, smoke runs)")
def build_tiny(seed: int = 0) -> HFSiglip:
    """A 2-layer, 64-wide SiglipModel at 32x32 pixels, initialised from `seed`."""
    from transformers import SiglipConfig, SiglipModel

    from mamf.models.tiny import BOS, EOS, MAX_LENGTH, PAD, VOCAB_SIZE

    config = SiglipConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=MAX_LENGTH, pad_token_id=PAD,
                         bos_token_id=BOS, eos_token_id=EOS, projection_size=64),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        siglip = SiglipModel(config)
    with torch.no_grad():  # SigLIP's own starting temperature and bias (Zhai et al. 2023)
        siglip.logit_scale.fill_(math.log(10.0))
        siglip.logit_bias.fill_(-10.0)
    siglip.eval()
    from mamf.models.tiny import byte_tokenizer

    # SigLIP's text tower takes no attention mask: its tokenizer gives the ids alone
    return HFSiglip(siglip, _FixedLengthTokenizer(byte_tokenizer(["input_ids"]), MAX_LENGTH),
                    name="tiny-random-siglip")
