"""Additive attention biases from token positions: causal mask, sliding window, ALiBi, Hard-ALiBi.

ALiBi (Press et al. 2022, arXiv 2108.12409) adds -m_h * (i - j) to the score of query i and key
j, with geometric slopes m_h = 2^(-8 h / H), h = 1..H. Hard-ALiBi (Jelassi et al. 2024, arXiv
2402.01032) replaces the slope by a hard cut: head h < n_hard sees only its last h + 1 tokens
(bias -inf for i - j > h, 0 otherwise) and the remaining heads see everything (NoPE).
"""

from __future__ import annotations

import torch
from torch import Tensor


def alibi_slopes(num_heads: int) -> Tensor:
    """(H,) slopes 2^(-8 h / H) for h = 1..H: the first head is the most local."""
    return 2.0 ** (-8.0 * torch.arange(1, num_heads + 1, dtype=torch.float32) / num_heads)


def hard_alibi_spans(num_heads: int, hard_heads: int) -> Tensor:
    """(H,) how many tokens back each head may look: h for the first ``hard_heads``, else inf."""
    spans = torch.full((num_heads,), float("inf"))
    spans[:hard_heads] = torch.arange(hard_heads, dtype=torch.float32)
    return spans


def attention_bias(
    query_pos: Tensor,
    key_pos: Tensor,
    *,
    window: int | None = None,
    slopes: Tensor | None = None,
    spans: Tensor | None = None,
) -> Tensor:
    """Float bias for SDPA: 0 or -inf masks, plus -m_h * distance for ALiBi.

    Args:
        query_pos: (Tq,) absolute positions of the queries.
        key_pos: (Tk,) absolute positions of the keys, or (B, H, Tk) per row and head (an evicted
            cache holds different tokens per head).
        window: a query sees the keys with 0 <= i - j < window (itself included); None = all.
        slopes: (H,) ALiBi slopes, or None.
        spans: (H,) per-head largest allowed distance i - j (inf = unlimited), or None.

    Returns:
        (Tq, Tk) for shared key positions without slopes or spans, (H, Tq, Tk) with them, and
        (B, H, Tq, Tk) for per-head key positions.
    """
    distance = (query_pos[:, None] - key_pos[..., None, :]).float()  # (Tq, Tk) or (B, H, Tq, Tk)
    allowed = distance >= 0
    if window is not None:
        allowed = allowed & (distance < window)
    if spans is not None:
        allowed = allowed & (distance <= spans.to(distance.device)[:, None, None])  # (.., H, Tq, Tk)
    bias = torch.zeros(allowed.shape, device=distance.device)
    if slopes is not None:
        bias = bias - slopes.to(distance.device)[:, None, None] * distance
    return bias.masked_fill(~allowed, float("-inf"))
