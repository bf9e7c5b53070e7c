"""The one classification loss every method shares (docs/method.md, "The model and the loss").

logits = exp(logit_scale) * cos(image embedding, text embedding of each candidate class);
cross-entropy from each image to its candidate class prompts.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def task_logits(logit_scale: torch.Tensor, image_emb: torch.Tensor,
                text_emb: torch.Tensor) -> torch.Tensor:
    """[B, D] x [C, D] -> [B, C] scaled cosine similarities (computed in float32)."""
    image_emb = F.normalize(image_emb.float(), dim=-1)
    text_emb = F.normalize(text_emb.float(), dim=-1)
    return logit_scale.float() * image_emb @ text_emb.T


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy from each image to its class among the candidates."""
    return F.cross_entropy(logits, labels)


def restrict_to_batch(classes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official code's candidates: only classes present in the batch (`candidates=batch`).

    A batch holding a single class then has a loss of exactly zero, as in the official code.
    """
    present = np.unique(labels)
    return classes[present], np.searchsorted(present, labels)


def sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SigLIP's loss (Zhai et al. 2023) over an image's candidate classes: each (image, class)
    pair is its own binary problem, +1 for the image's class and -1 for the others; summed over
    the candidates, averaged over the images, as transformers' `SiglipModel` does over a batch."""
    signs = 2 * F.one_hot(labels, logits.shape[1]).to(logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum(dim=1).mean()
