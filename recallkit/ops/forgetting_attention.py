"""Forgetting Attention (Lin, Nikishin, He, Courville 2025, "Forgetting Transformer: Softmax Attention
with a Forget Gate", arXiv 2503.02130): causal softmax attention whose logits carry a
data-dependent decay,

    o_i = sum_{j<=i} softmax_j(q_i^T k_j / sqrt(Dk) + D_ij) v_j,   D_ij = sum_{l=j+1..i} log f_l,

with one forget gate f_l in (0, 1) per head and token (log f_l <= 0, so D_ij <= 0 and D_ii = 0).

q, k: (B, H, T, Dk); v: (B, H, T, Dv); log_f: (B, H, T), <= 0. The state is a KV cache that also
holds, per cached token j, its decay bias as seen from the last token t, D_tj = c_t - c_j with
c_j = sum_{l<=j} log f_l (:class:`ForgetCache`). Storing the difference rather than c_j itself keeps
it exact in float32 however long the sequence grows (c_t only ever falls, and c_t - c_j would cancel);
a new token t + 1 adds log f_{t+1} to every cached bias and enters with D = 0. The state is kept in
float32 (float64 for float64 inputs). Two forms:

- :func:`forgetting_attention_recurrent`: the token loop (append k, v and 0, add log f, attend over
  the cache), the spec;
- :func:`forgetting_attention_chunked`: SDPA with the additive float bias D, masked causally, over
  chunks of ``chunk_size`` queries (so the bias held at once is (chunk_size, S + T), not (T, S + T));
  with chunk_size >= T it is the one-call parallel form.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from recallkit.ops.numerics import compute_dtype


class ForgetCache(NamedTuple):
    """The state of forgetting attention after t tokens: every token's key and value and its decay
    bias towards the last token."""

    key: Tensor  # (B, H, S, Dk)
    value: Tensor  # (B, H, S, Dv)
    decay: Tensor  # (B, H, S): D_tj = sum_{l=j+1..t} log f_l, <= 0, 0 for the last token


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, state: ForgetCache | None) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if log_f.shape != q.shape[:3]:
        raise ValueError(f"log_f must be (B, H, T) = {tuple(q.shape[:3])} (one forget gate per head and "
                         f"token); got {tuple(log_f.shape)}")
    if state is not None:
        B, H, _, Dk = q.shape
        S = state.key.shape[2] if state.key.ndim == 4 else -1
        if (state.key.shape != (B, H, S, Dk) or state.value.shape != (B, H, S, v.shape[-1])
                or state.decay.shape != (B, H, S)):
            got = ", ".join(str(tuple(t.shape)) for t in state)
            raise ValueError(f"state must hold key (B, H, S, Dk), value (B, H, S, Dv), decay (B, H, S) with "
                             f"B, H, Dk, Dv = {B}, {H}, {Dk}, {v.shape[-1]}; got {got}")


def init_forget_cache(q: Tensor, v: Tensor) -> ForgetCache:
    """The empty cache (S = 0) for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = q.shape
    ct = compute_dtype(q)
    key = torch.zeros(B, H, 0, Dk, device=q.device, dtype=ct)
    return ForgetCache(key, key.new_zeros(B, H, 0, v.shape[-1]), key.new_zeros(B, H, 0))


def _prepare(q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, state: ForgetCache | None):
    """Shape checks, then the inputs and the state in the compute dtype."""
    _check_shapes(q, k, v, log_f, state)
    ct = compute_dtype(q, k, v, log_f)
    state = init_forget_cache(q, v) if state is None else state
    return [t.to(ct) for t in (q, k, v, log_f)], ForgetCache(*(t.to(ct) for t in state))


def forgetting_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, *, state: ForgetCache | None = None
) -> tuple[Tensor, ForgetCache]:
    """Token by token (the reference): decode step t adds log f_t to every cached bias, appends
    (k_t, v_t, 0), then attends over the whole cache.

    Args:
        q, k: queries and keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        log_f: log forget gates, (B, H, T), <= 0.
        state: the cache from a previous call, or None for the empty one.
    Returns:
        y (B, H, T, Dv) in v's dtype and the cache after the last token, float32+.
    """
    (q_, k_, v_, f_), (key, value, decay) = _prepare(q, k, v, log_f, state)
    scale = q.shape[-1] ** -0.5
    enter = decay.new_zeros(*decay.shape[:2], 1)  # (B, H, 1): a token's bias towards itself, D_tt = 0
    outputs = []
    for t in range(q.shape[2]):
        key = torch.cat([key, k_[:, :, t : t + 1]], dim=2)  # (B, H, S + 1, Dk)
        value = torch.cat([value, v_[:, :, t : t + 1]], dim=2)
        decay = torch.cat([decay + f_[:, :, t : t + 1], enter], dim=2)
        scores = torch.einsum("bhd,bhsd->bhs", q_[:, :, t], key) * scale + decay  # (B, H, S + 1)
        outputs.append(torch.einsum("bhs,bhsd->bhd", scores.softmax(dim=-1), value))
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), ForgetCache(key, value, decay)


def forgetting_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, log_f: Tensor, *, state: ForgetCache | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, ForgetCache]:
    """The parallel form: SDPA over [cache; k] with the additive bias D, one chunk of queries at a time.

    For a chunk of queries with chunk-local cumulative log-gates a_i = sum_{l<=i} log f_l (over the
    chunk's tokens), the bias to a key j before the chunk is D_j + a_i (D_j its bias towards the token
    before the chunk) and to a key j in the chunk a_i - a_j for j <= i (-inf above the diagonal).
    After the chunk every earlier bias grows by a_C and the chunk's keys enter with a_C - a_j. The
    differences a_i - a_j span at most one chunk and are formed in float64, so a strong decay (a
    large |a|) does not leave its float32 rounding in the biases of the tokens after it.
    Same arguments and returns as :func:`forgetting_attention_recurrent`, plus ``chunk_size``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    (q_, k_, v_, f_), (key, value, decay) = _prepare(q, k, v, log_f, state)
    S, T = key.shape[2], q.shape[2]
    keys, values = torch.cat([key, k_], dim=2), torch.cat([value, v_], dim=2)  # (B, H, S + T, D)
    outputs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        # in float64: after a strong decay a_i and a_j are both large, and float32 sums would round
        # each to ulp(|a|) (6e-5 at a = -1e3), an error the difference a_i - a_j keeps
        a64 = f_[:, :, start:end].cumsum(dim=-1, dtype=torch.float64)  # (B, H, C)
        a = a64.to(f_.dtype)
        inner = (a64[..., :, None] - a64[..., None, :]).to(f_.dtype)  # (B, H, C, C): a_i - a_j
        causal = torch.ones(end - start, end - start, dtype=torch.bool, device=q.device).tril()
        bias = torch.cat([decay[..., None, :] + a[..., :, None],  # (B, H, C, S + start + C)
                          inner.masked_fill(~causal, float("-inf"))], dim=-1)
        # the CPU flash kernel has no gradient for a float mask, the math one has; under vmap, where
        # the bias does not show that it requires grad, the flash kernel would be chosen and fail
        with sdpa_kernel(SDPBackend.MATH) if torch.is_grad_enabled() else contextlib.nullcontext():
            outputs.append(F.scaled_dot_product_attention(
                q_[:, :, start:end], keys[:, :, : S + end], values[:, :, : S + end], attn_mask=bias))
        decay = torch.cat([decay + a[..., -1:], (a64[..., -1:] - a64).to(f_.dtype)], dim=-1)
    y = torch.cat(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), ForgetCache(keys, values, decay)
