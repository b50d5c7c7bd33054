"""The RWKV-6 (Finch) recurrence: a vector-gated linear attention read BEFORE the write, plus a bonus.

Per head (Peng, Goldstein, Anthony, et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and
Dynamic Recurrence", arXiv 2404.05892, eq. 21):
S_t = Diag(w_t) S_{t-1} + k_t v_t^T,  o_t = r_t^T (S_{t-1} + Diag(u) k_t v_t^T),
with w_t = exp(g_t) in (0, 1]^{Dk} one decay per key channel (g_t <= 0 the log-decay; Finch's
g_t = -exp(d_t)) and u in R^{Dk} the learnt "bonus" of the current token, one per head and channel.

r, k: (B, H, T, Dk); v: (B, H, T, Dv); g: (B, H, T, Dk), <= 0; u: (H, Dk); the state S: (B, H, Dk, Dv),
kept in float32 (float64 for float64 inputs). Two forms:

- :func:`rwkv6_recurrent`: the token loop, the spec;
- :func:`rwkv6_chunked`: the same through recallkit's chunked vector-gate linear attention
  (``gated_linear_attention_chunked``), the fast path for training and prefill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.gated_linear_attention import gated_linear_attention_chunked
from recallkit.ops.numerics import compute_dtype


def _check_shapes(r: Tensor, k: Tensor, v: Tensor, g: Tensor, u: Tensor) -> None:
    if r.dim() != 4 or k.shape != r.shape or v.dim() != 4 or v.shape[:3] != r.shape[:3]:
        raise ValueError(f"r, k must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(r.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if g.shape != r.shape:
        raise ValueError(f"g must be (B, H, T, Dk) = {tuple(r.shape)} (one log-decay per key channel); "
                         f"got {tuple(g.shape)}")
    if u.shape != (r.shape[1], r.shape[3]):
        raise ValueError(f"u must be (H, Dk) = {(r.shape[1], r.shape[3])} (one bonus per head and key "
                         f"channel); got {tuple(u.shape)}")


def init_rwkv6_state(r: Tensor, v: Tensor) -> Tensor:
    """Zero state (B, H, Dk, Dv) for inputs shaped like r (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = r.shape
    return torch.zeros(B, H, Dk, v.shape[-1], device=r.device, dtype=compute_dtype(r))


def rwkv6_recurrent(
    r: Tensor, k: Tensor, v: Tensor, g: Tensor, u: Tensor, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        r, k: receptances (queries) and keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        g: log-decays per key channel, (B, H, T, Dk), <= 0 (w_t = exp(g_t)).
        u: bonus of the current token, (H, Dk).
        state: S from a previous call, (B, H, Dk, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state S after the last token (B, H, Dk, Dv), float32+.
    """
    _check_shapes(r, k, v, g, u)
    ct = compute_dtype(r)
    S = init_rwkv6_state(r, v) if state is None else state.to(ct)
    r_, k_, v_, g_ = (t.to(ct) for t in (r, k, v, g))
    bonus = u.to(ct)[None, :, :, None]  # (1, H, Dk, 1): Diag(u) on the key rows
    outputs = []
    for r_t, k_t, v_t, g_t in zip(*(t.unbind(2) for t in (r_, k_, v_, g_))):
        kv = k_t[..., :, None] * v_t[..., None, :]  # (B, H, Dk, Dv): k_t v_t^T
        outputs.append(torch.einsum("bhk,bhkv->bhv", r_t, S + bonus * kv))  # read S_{t-1} + bonus
        S = g_t.exp()[..., None] * S + kv  # then write: S_t = Diag(w_t) S_{t-1} + k_t v_t^T
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), S


def rwkv6_chunked(
    r: Tensor, k: Tensor, v: Tensor, g: Tensor, u: Tensor, *, state: Tensor | None = None,
    chunk_size: int = 64, sub_chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """RWKV-6 through the chunked vector-gate linear attention, keys, values and gates shifted by one.

    Claim: with k'_1 = 0, v'_1 = 0, g'_1 = 0 and k'_t = k_{t-1}, v'_t = v_{t-1}, g'_t = g_{t-1} for
    t >= 2, the GLA recurrence S'_t = Diag(exp(g'_t)) S'_{t-1} + k'_t v'_t^T from S'_0 = S_0 gives
    S'_t = S_{t-1} for every t >= 1 (S the RWKV-6 state, S_0 the given one).
    Proof by induction: S'_1 = Diag(exp(0)) S_0 + 0 = S_0; if S'_{t-1} = S_{t-2} then
    S'_t = Diag(w_{t-1}) S_{t-2} + k_{t-1} v_{t-1}^T = S_{t-1} by the RWKV-6 update at t - 1.
    Hence GLA's output r_t^T S'_t is the read r_t^T S_{t-1}, and the rest of o_t is the bonus
    r_t^T Diag(u) k_t v_t^T = (sum_d r_td u_d k_td) v_t, an elementwise term added per token.
    GLA's final state is S'_T = S_{T-1}; one more update, S_T = Diag(w_T) S'_T + k_T v_T^T, gives the
    RWKV-6 state after the last token. Same arguments and returns as :func:`rwkv6_recurrent`, plus
    ``chunk_size`` and ``sub_chunk_size`` (passed to ``gated_linear_attention_chunked``).
    """
    _check_shapes(r, k, v, g, u)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(r)
    S = init_rwkv6_state(r, v) if state is None else state.to(ct)
    if r.shape[2] == 0:
        return v[:, :, :0], S
    r_, k_, v_, g_ = (t.to(ct) for t in (r, k, v, g))
    shift = (0, 0, 1, -1)  # one zero row in front, the last row dropped: x'_t = x_{t-1}, x'_1 = 0
    k_s, v_s, g_s = (F.pad(t, shift) for t in (k_, v_, g_))  # (B, H, T, D)
    read, S_prev = gated_linear_attention_chunked(r_, k_s, v_s, g_s, state=S, chunk_size=chunk_size,
                                                  sub_chunk_size=sub_chunk_size)  # r^T S_{t-1}, S_{T-1}
    bonus = (r_ * u.to(ct)[None, :, None, :] * k_).sum(-1, keepdim=True) * v_  # (B, H, T, Dv)
    k_T, v_T = k_[:, :, -1], v_[:, :, -1]  # (B, H, Dk), (B, H, Dv)
    S = g_[:, :, -1].exp()[..., None] * S_prev + k_T[..., :, None] * v_T[..., None, :]  # S_T
    return (read + bonus).to(v.dtype), S
