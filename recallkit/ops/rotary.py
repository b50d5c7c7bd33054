"""Rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864).

Channel pairs (x_i, x_{i + d/2}) of a query/key at position p are rotated by the angle
p * base^(-2i/d), so q_m . k_n depends on positions only through m - n.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apply_rotary(x: Tensor, start: int, base: float = 10_000.0) -> Tensor:
    """Rotate x (B, H, T, d) for positions start .. start + T - 1; d must be even."""
    T, d = x.shape[-2], x.shape[-1]
    half = d // 2
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)  # (d/2,)
    angles = torch.arange(start, start + T, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # (T, d/2)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
