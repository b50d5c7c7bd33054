"""Numerics shared by the gated kernels: float32-or-wider states and exp of masked log-decays."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """Dtype for states and cumulative gates: float32, or float64 for float64 inputs."""
    return torch.promote_types(x.dtype, torch.float32)


def masked_exp(diff: Tensor, mask: Tensor) -> Tensor:
    """exp(diff) where mask, else 0; masked BEFORE exp so exp never sees the (positive) i < j entries."""
    return diff.masked_fill(~mask, float("-inf")).exp()
