"""JRT's masked-language-model objective on the prefix (Arora et al. 2024, arXiv 2407.05483).

Prefix-aware models (PLA) read the prefix non-causally, so a token inside it can be predicted from
both sides. JRT-RNN trains them with next-token prediction after the prefix plus an MLM loss:
a fraction P of the prefix tokens is replaced by a reserved mask token and the hidden state at a
masked position must recover the original token (weight ``mlm_weight``, 0.25 by default).
Without MLM too, a prefix-aware model is never scored on a label it can see (``labels_after_prefix``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.tasks.base import IGNORE_INDEX


def labels_after_prefix(labels: Tensor, prefix_len: Tensor) -> Tensor:
    """Labels a prefix-aware model may be scored on: position i predicts token i + 1, which it can
    see when i + 1 < M, so every label before position M - 1 becomes ``IGNORE_INDEX``.

    Args:
        labels: (B, T) next-token labels.
        prefix_len: (B,) prefix length M per example.
    """
    positions = torch.arange(labels.shape[1], device=labels.device)[None]  # (1, T)
    before = positions < prefix_len.to(labels.device)[:, None] - 1  # (B, T)
    return labels.masked_fill(before, IGNORE_INDEX)


def mask_prefix(inputs: Tensor, prefix_len: Tensor, prob: float, mask_token: int,
                generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mask each prefix token independently with probability ``prob``.

    Args:
        inputs: (B, T) token ids.
        prefix_len: (B,) end of each example's prefix; positions >= it are never masked.
        prob: masking probability per prefix position.
        mask_token: the reserved id written at masked positions.
        generator: CPU generator (the masks are reproducible per seed).

    Returns:
        masked inputs (B, T) and MLM targets (B, T): the original token where masked, else
        ``IGNORE_INDEX``.
    """
    B, T = inputs.shape
    in_prefix = torch.arange(T)[None, :] < prefix_len.cpu()[:, None]  # (B, T)
    masked = (torch.rand(B, T, generator=generator) < prob) & in_prefix
    masked = masked.to(inputs.device)
    targets = torch.where(masked, inputs, torch.full_like(inputs, IGNORE_INDEX))
    return inputs.masked_fill(masked, mask_token), targets


def mlm_loss(logits_of, hidden: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy at the masked positions; 0 when nothing is masked.

    Args:
        logits_of: the model's head, (N, D) -> (N, V).
        hidden: (B, T, D) hidden states of the masked inputs.
        targets: (B, T) from :func:`mask_prefix`.
    """
    masked = targets != IGNORE_INDEX
    if not masked.any():
        return hidden.sum() * 0.0  # keeps the graph (and the dtype/device) without a NaN mean
    return F.cross_entropy(logits_of(hidden[masked]), targets[masked])
