"""The delta rule with a per-channel gate (Kimi Delta Attention):
S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T,  y_t = S_t^T q_t.

KDA (Kimi Team 2025, "Kimi Linear: An Expressive, Efficient Attention Architecture", arXiv 2510.26692,
section 3) is Gated DeltaNet (``recallkit.ops.delta_rule``) with its scalar log-decay per
head replaced by one per key channel, g_t in R^{Dk}, g_t <= 0: each row of the state forgets at its
own rate before the delta step edits the association under k_t. With g_t constant over the channels
it is the gated delta rule exactly (Diag(a) = a I commutes with I - beta k k^T).

q, k: (B, H, T, Dk); v: (B, H, T, Dv); beta: (B, H, T) in [0, 1]; g: (B, H, T, Dk), <= 0; the state
S: (B, H, Dk, Dv), kept in float32 (float64 for float64 inputs). Keys should be L2-normalised (then
I - beta k k^T is a contraction and so is every step). Two forms, as for the delta rule:

- :func:`kda_recurrent`: the token loop, the spec;
- :func:`kda_chunked`: the chunkwise WY / UT-transform form with per-channel cumulative decays, the
  fast path for training and prefill (with chunk_size >= T it is the one-chunk quadratic form from
  the given state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.gated_linear_attention import _sub_chunk_for, _VectorGateScores
from recallkit.ops.member_fold import folds_members
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.segments import chunk_length, in_segments, segment_length


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor) -> None:
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if beta.shape != q.shape[:3]:
        raise ValueError(f"beta must be (B, H, T) = {tuple(q.shape[:3])}; got {tuple(beta.shape)}")
    if g.shape != q.shape:
        raise ValueError(f"g must be (B, H, T, Dk) = {tuple(q.shape)} (one log-decay per key channel); "
                         f"got {tuple(g.shape)}")


def init_kda_state(q: Tensor, v: Tensor) -> Tensor:
    """Zero state (B, H, Dk, Dv) for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = q.shape
    return torch.zeros(B, H, Dk, v.shape[-1], device=q.device, dtype=compute_dtype(q))


def kda_recurrent(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        q, k: queries and (L2-normalised) keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        beta: writing strengths, (B, H, T), in [0, 1].
        g: log-decays per key channel, (B, H, T, Dk), <= 0.
        state: S from a previous call, (B, H, Dk, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state S after the last token (B, H, Dk, Dv), float32+.
    """
    _check_shapes(q, k, v, beta, g)
    ct = compute_dtype(q)
    S = init_kda_state(q, v) if state is None else state.to(ct)
    q_, k_, v_, b_, g_ = (t.to(ct) for t in (q, k, v, beta, g))
    outputs = []
    for t in range(q.shape[2]):
        k_t, b_t = k_[:, :, t], b_[:, :, t, None, None]  # (B, H, Dk), (B, H, 1, 1)
        S = g_[:, :, t, :, None].exp() * S  # Diag(exp(g_t)) S: row d of S decays by exp(g_td)
        read = torch.einsum("bhk,bhkv->bhv", k_t, S)  # what the key retrieves from the decayed state
        S = S + b_t * k_t[..., :, None] * (v_[:, :, t] - read)[..., None, :]  # (I - b k k^T) S + b k v^T
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_[:, :, t], S))
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), S


@folds_members
def kda_chunked(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, *, state: Tensor | None = None,
    chunk_size: int = 32, sub_chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form with the WY / UT transform and per-channel decays.

    Write the update as S_t = D_t S_{t-1} + k_t u_t^T with D_t = Diag(exp(g_t)) and the pseudo-value
    u_t = beta_t (v_t - S_{t-1}^T (exp(g_t) ⊙ k_t)). Inside a chunk with state S before it and
    chunk-local cumulative log-decays c_i in R^{Dk} (<= 0), unrolling gives
    S_i = Diag(exp(c_i)) S + sum_{j<=i} Diag(exp(c_i - c_j)) k_j u_j^T, hence
    u_i = beta_i (v_i - S^T (exp(c_i) ⊙ k_i) - sum_{j<i} A_ij u_j) with the vector-gated key scores
    A_ij = sum_d k_id k_jd exp(c_id - c_jd): the unit lower triangular system
    (I + strictly_lower(diag(beta) A)) U' = diag(beta) (V - K_w S), K_w = K ⊙ exp(c). Its solution is
    U' = U - W S with [W U] = (I + L)^{-1} diag(beta) [K_w V] ((I + L)^{-1} from one triangular solve
    with I as its right-hand side, as in :func:`recallkit.ops.delta_rule_chunked`, then two GEMMs).
    The loop over chunks runs U' = U - W S and S' = Diag(exp(c_C)) S + K_d^T U' with
    K_d = K ⊙ exp(c_C - c), two small GEMMs per chunk; after it, batched over chunks,
    Y = (Q ⊙ exp(c)) S + P U' with P_ij = sum_d q_id k_jd exp(c_id - c_jd) (j <= i). The scores A and P come
    from the vector-gate linear attention's ``_VectorGateScores``: one GEMM through exp(c) and exp(-c)
    per chunk while every chunk of the call stays within 40 nats, else the sub-chunk factorisation
    (``sub_chunk_size``), whose exponentials stay bounded for any decay. Their exponents are differences
    of float32 chunk-local sums: after one token with a log-decay of -G the error grows as ~ 6e-8 G
    (3e-5 relative at G = 1e3; the loop form stays at ~3e-7), see ``gated_linear_attention_chunked``.
    Padding of a partial last chunk uses beta = 0, g = 0, k = v = 0, which leaves the state untouched.
    Same arguments and returns as :func:`kda_recurrent`, plus ``chunk_size`` and ``sub_chunk_size``.
    """
    _check_shapes(q, k, v, beta, g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    S = init_kda_state(q, v) if state is None else state.to(ct)
    if T == 0:
        return v[:, :, :0], S
    if T > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(kda_chunked, {"q": q, "k": k, "v": v, "beta": beta, "g": g}, state=S,
                           length=segment_length(chunk_size), chunk_size=chunk_size,
                           sub_chunk_size=sub_chunk_size)
    q_, k_, v_, b_, g_ = (t.to(ct) for t in (q, k, v, beta, g))
    C = chunk_length(T, chunk_size, sub_chunk_size)
    pad = (-T) % C
    if pad:
        q_, k_, v_, g_ = (F.pad(t, (0, 0, 0, pad)) for t in (q_, k_, v_, g_))
        b_ = F.pad(b_, (0, pad))
    N = q_.shape[2] // C
    qc, kc, vc, gc = (t.reshape(B, H, N, C, t.shape[-1]) for t in (q_, k_, v_, g_))  # (B, H, N, C, D)
    bc = b_.reshape(B, H, N, C, 1)
    cum = torch.cumsum(gc, dim=3)  # (B, H, N, C, Dk), chunk-local, <= 0
    last = cum[:, :, :, -1:]  # (B, H, N, 1, Dk): log-decay over the whole chunk
    scores = _VectorGateScores(cum, _sub_chunk_for(cum, sub_chunk_size))
    kk, qk = scores.full(torch.stack([kc, qc]), scores.keys(kc))  # one set of decays for both
    kk = kk.tril(-1)  # A, strictly lower; qk is P, causal incl. the diagonal
    k_w = kc * cum.exp()  # keys as seen by the start-of-chunk state
    k_d = kc * (last - cum).exp()  # keys as carried to the end of the chunk
    q_s = qc * cum.exp()
    chunk_decay = last.exp().transpose(-1, -2)  # (B, H, N, Dk, 1): Diag(exp(c_C))
    # UT transform: [W U] = (I + strictly_lower(diag(beta) A))^{-1} diag(beta) [K_w V]
    eye = torch.eye(C, dtype=ct, device=q.device)
    T_ut = torch.linalg.solve_triangular(bc * kk + eye, eye.expand_as(kk), upper=False, unitriangular=True)
    W, U = T_ut @ (bc * k_w), T_ut @ (bc * vc)  # (B, H, N, C, Dk), (B, H, N, C, Dv)
    k_dT = k_d.transpose(-1, -2)  # (B, H, N, Dk, C)
    befores, u_new = [], []
    # chunk views by unbind, whose backward stacks their gradients once (a slice's is a zero-filled copy
    # of the whole tensor): 0.94-1.11x forward + backward, 1.03-1.11x at N >= 1024, measured
    for U_c, W_c, decay_c, k_dT_c in zip(*(t.unbind(2) for t in (U, W, chunk_decay, k_dT))):
        befores.append(S)  # U'_c = U_c - W_c S_c, then S_{c+1} = Diag(exp(c_C)) S_c + K_d^T U'_c
        u_new.append(U_c - W_c @ S)  # (B, H, C, Dv): the pseudo-values U'
        S = decay_c * S + k_dT_c @ u_new[-1]
    S_before = torch.stack(befores, dim=2)  # (B, H, N, Dk, Dv)
    y = q_s @ S_before + qk @ torch.stack(u_new, dim=2)  # (B, H, N, C, Dv)
    return y.reshape(B, H, N * C, Dv)[:, :, :T].to(v.dtype), S
