"""Numerics shared by the kernels and mixers: the one compute dtype, exp of masked log-decays, the
switch that keeps kernels from choosing a code path by the values of their inputs, and copies of state
tensors that would keep larger activations alive."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

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


def owned(t: Tensor) -> Tensor:
    """``t`` when it holds all of its storage, else a copy: a state tensor sliced from a prefill's
    activations (the last K - 1 conv inputs, the last token, a window of keys) would keep the whole
    (B, T, ...) activation alive for as long as the state is kept."""
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


def masked_exp(diff: Tensor, mask: Tensor) -> Tensor:
    """exp(diff) where mask, else 0; masked BEFORE exp so exp never sees the (positive) i < j entries."""
    return diff.masked_fill(~mask, float("-inf")).exp_()


_FIXED_PATHS = contextvars.ContextVar("recallkit_fixed_paths", default=False)
_FIRST_ORDER = contextvars.ContextVar("recallkit_first_order", default=False)


@contextlib.contextmanager
def fixed_paths(*, first_order: bool = False) -> Iterator[None]:
    """Inside this context no kernel picks a code path from tensor values: where a kernel would check
    its decays to choose a fast GEMM form over the exact one, it takes the exact form. Both forms
    compute the same function; ``torch.func.vmap`` (packed training) and ``torch.compile`` cannot
    branch on a value, so they run kernels in this context. Kernels with a written backward also
    leave it to autograd here (which then gives higher derivatives), unless ``first_order``: the
    caller takes first derivatives by reverse mode alone (packed training), and a written backward
    that carries a vmap rule is kept."""
    with _paths(fixed=True, first_order=first_order):
        yield


def paths_fixed() -> bool:
    """True inside :func:`fixed_paths`."""
    return _FIXED_PATHS.get()


def adjoints_allowed() -> bool:
    """Whether a kernel whose written backward has a vmap rule may use it: outside
    :func:`fixed_paths`, or inside it with ``first_order``."""
    return not _FIXED_PATHS.get() or _FIRST_ORDER.get()


def first_order_only() -> bool:
    """True inside ``fixed_paths(first_order=True)`` (packed training)."""
    return _FIXED_PATHS.get() and _FIRST_ORDER.get()


@contextlib.contextmanager
def free_paths() -> Iterator[None]:
    """Leave :func:`fixed_paths` for a block that runs outside any torch.func transform (a kernel
    called by ``ops.member_fold`` on plain tensors): kernels pick their paths from values again."""
    with _paths(fixed=False, first_order=False):
        yield


@contextlib.contextmanager
def _paths(*, fixed: bool, first_order: bool) -> Iterator[None]:
    tokens = _FIXED_PATHS.set(fixed), _FIRST_ORDER.set(first_order)
    try:
        yield
    finally:
        _FIRST_ORDER.reset(tokens[1])
        _FIXED_PATHS.reset(tokens[0])
