"""Numerics shared by the kernels and mixers: the one compute dtype, and exp of masked log-decays."""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def compute_dtype(*inputs: Tensor | torch.dtype) -> torch.dtype:
    """The dtype to accumulate states, gates and FFTs in: the inputs' promoted dtype, at least float32.

    float16 / bfloat16 -> float32 (half precision is never accumulated), float32 -> float32,
    float64 -> float64, and a complex input keeps it complex (complex64, or complex128 with any
    64-bit input); ``.to_real()`` of the result is the matching real dtype. Promoting, never casting
    to float32, keeps float64 exact end to end (what ``torch.autograd.gradcheck`` needs).
    """
    dtypes = (x if isinstance(x, torch.dtype) else x.dtype for x in inputs)
    return functools.reduce(torch.promote_types, dtypes, torch.float32)


def masked_exp(diff: Tensor, mask: Tensor) -> Tensor:
    """exp(diff) where mask, else 0; masked BEFORE exp so exp never sees the (positive) i < j entries."""
    return diff.masked_fill(~mask, float("-inf")).exp()
