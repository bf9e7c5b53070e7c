"""`tiny-random-clip`: a small, randomly initialised CLIPModel built in code, for tests and smoke runs.

It is UNTRAINED: its zero-shot accuracy is chance. Its tokenizer maps each UTF-8 byte of a prompt
to its own id (0-255) between BOS and EOS; it is built in code as a transformers tokenizer, so it
needs no files and no network, and an export saves it beside the model for
`AutoTokenizer.from_pretrained` to load without mamf.
"""

from __future__ import annotations

import torch

from mamf.models.hf_clip import HFClip, _HFTokenizer
from mamf.models.registry import register_builtin

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259
MAX_LENGTH = 48
SPECIAL = {"<|pad|>": PAD, "<|startoftext|>": BOS, "<|endoftext|>": EOS}


def _byte_chars() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: what a byte-level pre-tokenizer emits."""
    shown = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
             *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in shown]
    return {**{b: chr(b) for b in shown}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def byte_tokenizer(inputs: list[str] | None = None):
    """The tiny models' tokenizer: byte b -> id b, [BOS] bytes [EOS], padded with PAD. A
    special token's spelling inside a prompt is read as its bytes (`split_special_tokens`).
    `inputs`: what it returns (default: the ids and the attention mask)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {char: b for b, char in _byte_chars().items()} | SPECIAL
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", BOS), ("<|endoftext|>", EOS)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|startoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|pad|>",
                                   model_max_length=MAX_LENGTH, split_special_tokens=True,
                                   model_input_names=inputs or ["input_ids", "attention_mask"])


def ByteTokenizer() -> _HFTokenizer:  # noqa: N802 (was a class; bench/ builds it by this name)
    """`texts -> {input_ids, attention_mask}`, padded to the longest prompt, at most MAX_LENGTH
    tokens; CLIP pools the text at the EOS position."""
    return _HFTokenizer(byte_tokenizer(), MAX_LENGTH)


@register_builtin("tiny-random-clip", "small randomly initialised CLIP built in code (UNTRAINED; "
                  "tests, smoke runs)")
def build(seed: int = 0) -> HFClip:
    """A 2-layer, 64-wide CLIP at 32x32 pixels, initialised from `seed`."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=MAX_LENGTH, pad_token_id=PAD,
                         bos_token_id=BOS, eos_token_id=EOS),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip = CLIPModel(config)
    clip.eval()
    return HFClip(clip, ByteTokenizer(), name="tiny-random-clip", image_mean=(0.5, 0.5, 0.5),
                  image_std=(0.5, 0.5, 0.5))
