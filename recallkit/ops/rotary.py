"""Rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864).

Channel pairs (x_i, x_{i + d/2}) of a query/key at position p are rotated by the angle
p * base^(-2i/d), so q_m . k_n depends on positions only through m - n.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_rotary(x: Tensor, start: int, base: float = 10_000.0) -> Tensor:
    """Rotate x (B, H, T, d) for positions start .. start + T - 1; d must be even."""
    return rotate_at(x, torch.arange(start, start + x.shape[-2], device=x.device), base)


def rotate_at(x: Tensor, positions: Tensor, base: float = 10_000.0) -> Tensor:
    """Rotate x (..., d) for arbitrary integer ``positions`` broadcastable to x.shape[:-1]
    (an evicted KV cache holds keys at scattered positions); d must be even."""
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., d/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
