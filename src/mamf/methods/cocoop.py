"""CoCoOp (Zhou, Yang, Loy and Liu, "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022): CoOp's context shifted per image by a small meta-net of the image's embedding, so
the prompts follow the image (docs/method.md, "CoOp, CoCoOp").

    pi = meta_net(normalise(f)),   [V]_m(f) = [V]_m + pi,   t_c(f) = text_tower([V](f) <name of c>.)

meta_net: Linear(D, D/16), ReLU, Linear(D/16, W) (D the embedding size, W the token width),
trained with the context by CoOp's SGD at `baseline.cocoop_lr`; the context starts at the words
of `baseline.cocoop_init` ("a photo of a", the paper's). Every image has its own prompts, so a
step runs the text tower once per (image, class): the paper trains with batch 1 for that reason.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mamf.catalogue import MAX_RATE, Setting
from mamf.methods.base import register
from mamf.methods.coop import CONTEXT, CoOp, Prompted, class_embeddings, meta_network

PROMPTS_PER_CHUNK = 1024  # (image, class) prompts a test-time text forward takes at most


@register
class CoCoOp(CoOp):
    name = "cocoop"
    settings = (
        CONTEXT,
        Setting("baseline.cocoop_init", str, "a photo of a", "the words the context starts at "
                "(the paper's M = 4); \"\": M random vectors"),
        Setting("baseline.cocoop_lr", float, 2e-3, "the SGD rate of the context and the "
                "meta-net", minimum=0, above=True, maximum=MAX_RATE),
    )

    def init_words(self) -> str:
        return self.config.baseline.cocoop_init

    def learning_rate(self) -> float:
        return self.config.baseline.cocoop_lr

    def class_specific(self) -> bool:
        return False

    def meta_net(self, dim: int, width: int) -> torch.nn.Module:
        return meta_network(dim, max(1, dim // 16), width)

    def score_batch(self, ways: int) -> int:
        return max(1, PROMPTS_PER_CHUNK // ways)

    def logits(self, prompted: Prompted, images: torch.Tensor,
               classes: np.ndarray) -> torch.Tensor:
        """Each image against the classes prompted by its own context."""
        context, model = prompted.context, prompted.model
        shift = context.meta_net(F.normalize(images.float(), dim=-1))  # [B, W]
        ctx = context.vectors.unsqueeze(0) + shift.unsqueeze(1)  # [B, M, W]
        n, b = len(classes), len(images)
        per_prompt = ctx.unsqueeze(1).expand(b, n, -1, -1).reshape(b * n, *ctx.shape[1:])
        texts = class_embeddings(model, prompted.prompts, np.tile(classes, b), per_prompt)
        texts = texts.view(b, n, -1)
        return torch.cat([model.task_logits(images[i : i + 1], texts[i]) for i in range(b)])
