"""`tiny-random-clip`: a small, randomly initialised CLIPModel built in code, for tests and smoke runs.

It is UNTRAINED: its zero-shot accuracy is chance. Its tokenizer is a byte-level vocabulary built in
code, so it needs no files and no network.
"""

from __future__ import annotations

import torch

from mamf.models.hf_clip import HFClip
from mamf.models.registry import register_builtin

PAD, BOS, EOS = 256, 257, 258
VOCAB_SIZE = 259
MAX_LENGTH = 48


class ByteTokenizer:
    """UTF-8 bytes as tokens, with BOS/EOS/PAD; CLIP pools the text at the EOS position."""

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        rows = [[BOS, *t.encode("utf-8")[: MAX_LENGTH - 2], EOS] for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


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
