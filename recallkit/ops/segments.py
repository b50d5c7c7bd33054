"""Cache blocking for the chunked kernels: long sequences run as consecutive segments.

A chunked kernel materialises per-chunk tensors for the whole sequence at once (scores
(N, C, C), states (N, Dk, Dv)); beyond a few thousand tokens they leave the CPU caches and the
batched GEMMs slow down (measured: identity linear attention, 8 heads of 64, N = 16k: 137 ms in
one piece, 107 ms in segments of 512 tokens). Running segments one after another and carrying
the state between them computes the same recurrence, so it changes speed, not results.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

SEGMENT_TOKENS = 512


def chunk_length(T: int, chunk_size: int, multiple: int = 1) -> int:
    """The chunk a kernel cuts T tokens into: ``chunk_size``, or T rounded up to ``multiple`` (a
    vector-gate kernel's sub-chunk) when that is shorter. A sequence shorter than one chunk is one
    chunk of its own length, not padded to a whole ``chunk_size`` (at T = 32 and chunk 64 that
    padding doubled the GEMMs and quadrupled the (C, C) scores)."""
    multiple = max(1, multiple)
    return min(chunk_size, -(-T // multiple) * multiple)


def segment_length(chunk_size: int) -> int:
    """Tokens per segment: a multiple of the chunk size, about SEGMENT_TOKENS."""
    return chunk_size * max(1, SEGMENT_TOKENS // chunk_size)


def in_segments(
    kernel: Callable[..., tuple[Tensor, Tensor]],
    sequences: dict[str, Tensor | None],
    *,
    state: Tensor | None,
    length: int,
    dim: int = 2,
    **kwargs,
) -> tuple[Tensor, Tensor]:
    """Run ``kernel(**sequences_slice, state=state, **kwargs)`` over slices of ``length`` tokens.

    Args:
        kernel: a chunked kernel returning (y, state), y with time along ``dim``.
        sequences: its per-token arguments (time along ``dim``); None entries are passed as None.
        state: the state before the first token (None = zeros).
        length: tokens per slice.
        dim: the time dimension of the inputs and of y.
    Returns:
        y for the whole sequence and the state after the last token.
    """
    T = next(x for x in sequences.values() if x is not None).shape[dim]
    outputs = []
    for start in range(0, T, length):
        size = min(length, T - start)
        piece = {name: None if x is None else x.narrow(dim, start, size) for name, x in sequences.items()}
        y, state = kernel(**piece, state=state, **kwargs)
        outputs.append(y)
    return torch.cat(outputs, dim=dim), state
