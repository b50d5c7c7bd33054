"""The diagonal-plus-low-rank (DPLR) delta rule of RWKV-7:
S_t = (Diag(exp(g_t)) + alpha_t beta_t^T) S_{t-1} + k_t v_t^T,  y_t = S_t^T q_t.

RWKV-7 (Peng, Zhang, Goldstein, et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State
Evolution", arXiv 2503.14456) writes its state update in the transposed orientation (S is d_v x d_k)
as S_t = S_{t-1} (Diag(w_t) - kappa_t^T (a_t ⊙ kappa_t)) + v_t^T k~_t with o_t = S_t r_t; in
recallkit's (d_k, d_v) orientation that is the update above with q = r, k = k~, g = log w,
alpha = -(a ⊙ kappa) and beta = kappa. Any per-channel decay with a rank-1 correction fits: KDA
(``recallkit.ops.kda``) is alpha_t = -b_t k_t, beta_t = exp(g_t) ⊙ k_t with the written key b_t k_t.

q, k, alpha, beta, g: (B, H, T, Dk), g <= 0 (log-decays); v: (B, H, T, Dv); the state S: (B, H, Dk, Dv),
kept in float32 (float64 for float64 inputs). Two forms:

- :func:`rwkv7_recurrent`: the token loop, the spec;
- :func:`rwkv7_chunked`: the chunkwise UT-transform form with per-channel cumulative decays, the fast
  path for training and prefill (with chunk_size >= T it is the one-chunk quadratic form from the
  given state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.gated_linear_attention import _sub_chunk_for, _VectorGateScores
from recallkit.ops.member_fold import folds_members
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.segments import chunk_length, in_segments, segment_length


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, g: Tensor) -> None:
    if q.dim() != 4 or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(q.shape)}, "
                         f"{tuple(v.shape)}")
    for name, t in (("k", k), ("alpha", alpha), ("beta", beta), ("g", g)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must be (B, H, T, Dk) = {tuple(q.shape)} like q; got {tuple(t.shape)}")


def init_rwkv7_state(q: Tensor, v: Tensor) -> Tensor:
    """Zero state (B, H, Dk, Dv) for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = q.shape
    return torch.zeros(B, H, Dk, v.shape[-1], device=q.device, dtype=compute_dtype(q))


def rwkv7_recurrent(
    q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, g: Tensor, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        q: queries (RWKV's receptance r), (B, H, T, Dk).
        k: written keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        alpha, beta: the rank-1 part alpha_t beta_t^T of the transition, (B, H, T, Dk) each.
        g: log-decays per key channel, (B, H, T, Dk), <= 0.
        state: S from a previous call, (B, H, Dk, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state S after the last token (B, H, Dk, Dv), float32+.
    """
    _check_shapes(q, k, v, alpha, beta, g)
    ct = compute_dtype(q)
    S = init_rwkv7_state(q, v) if state is None else state.to(ct)
    q_, k_, v_, a_, b_, g_ = (t.to(ct) for t in (q, k, v, alpha, beta, g))
    outputs = []
    for t in range(q.shape[2]):
        read = torch.einsum("bhk,bhkv->bhv", b_[:, :, t], S)  # beta_t^T S_{t-1}: (B, H, Dv)
        S = (g_[:, :, t, :, None].exp() * S + a_[:, :, t, :, None] * read[..., None, :]
             + k_[:, :, t, :, None] * v_[:, :, t, None, :])  # (Diag(exp g) + alpha beta^T) S + k v^T
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_[:, :, t], S))
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), S


@folds_members
def rwkv7_chunked(
    q: Tensor, k: Tensor, v: Tensor, alpha: Tensor, beta: Tensor, g: Tensor, *, state: Tensor | None = None,
    chunk_size: int = 32, sub_chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form with the UT transform and per-channel decays.

    With the pseudo-value u_t = S_{t-1}^T beta_t the update is S_t = D_t S_{t-1} + alpha_t u_t^T + k_t v_t^T,
    D_t = Diag(exp(g_t)). Inside a chunk with state S before it, chunk-local cumulative log-decays c_i
    and e_i = c_{i-1} (e_1 = 0), unrolling gives
    S_i = Diag(exp(c_i)) S + sum_{j<=i} Diag(exp(c_i - c_j)) (alpha_j u_j^T + k_j v_j^T), hence
    u_i = S^T (beta_i ⊙ exp(e_i)) + sum_{j<i} (A_ij u_j + G_ij v_j) with the strictly lower scores
    A_ij = sum_d beta_id alpha_jd exp(e_id - c_jd) and G_ij likewise with k: the unit lower triangular
    system (I - A) U = B_e S + G V, B_e = beta ⊙ exp(e). Its solution is U = W S + U~ with
    [W U~] = (I - A)^{-1} [B_e, G V] ((I - A)^{-1} from one triangular solve with I as its right-hand
    side, as in :func:`recallkit.ops.delta_rule_chunked`, then GEMMs). The loop over chunks runs
    U = W S + U~ and S' = Diag(exp(c_C)) S + A_d^T U + K_d^T V with A_d, K_d = alpha, k ⊙ exp(c_C - c)
    (K_d^T V batched before it), two small GEMMs per chunk; after it, batched over chunks,
    Y = (Q ⊙ exp(c)) S + P_a U + P_k V with P_a, P_k the causal scores (diagonal included) of q
    against alpha and k with exp(c_i - c_j). The four score matrices come from
    ``recallkit.ops.gated_linear_attention._VectorGateScores``: one GEMM through exp(c) and exp(-c) per
    chunk while every chunk of the call stays within 40 nats, else the sub-chunk factorisation
    (``sub_chunk_size``), whose exponentials stay bounded for any decay.
    With alpha = -b k, beta = exp(g) ⊙ k and written keys b k this is ``kda_chunked``'s algebra.
    Padding of a partial last chunk uses g = 0 and zero q, k, v, alpha, beta: the state stays untouched.
    Same arguments and returns as :func:`rwkv7_recurrent`, plus ``chunk_size`` and ``sub_chunk_size``.
    """
    _check_shapes(q, k, v, alpha, beta, g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    S = init_rwkv7_state(q, v) if state is None else state.to(ct)
    if T == 0:
        return v[:, :, :0], S
    if T > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(rwkv7_chunked, {"q": q, "k": k, "v": v, "alpha": alpha, "beta": beta, "g": g},
                           state=S, length=segment_length(chunk_size), chunk_size=chunk_size,
                           sub_chunk_size=sub_chunk_size)
    C = chunk_length(T, chunk_size, sub_chunk_size)
    pad = (-T) % C
    qc, kc, vc, ac, bc, gc = (F.pad(t.to(ct), (0, 0, 0, pad)).reshape(B, H, -1, C, t.shape[-1])
                              for t in (q, k, v, alpha, beta, g))  # (B, H, N, C, D)
    N = qc.shape[2]
    cum = torch.cumsum(gc, dim=3)  # c: (B, H, N, C, Dk), chunk-local, <= 0
    exc = F.pad(cum[..., :-1, :], (0, 0, 1, 0))  # e_i = c_{i-1}: the decay before token i
    last = cum[..., -1:, :]  # (B, H, N, 1, Dk): log-decay over the whole chunk
    scores = _VectorGateScores(cum, _sub_chunk_for(cum, sub_chunk_size))
    a_keys, k_keys = scores.keys(ac), scores.keys(kc)
    A = scores.full(bc, a_keys, q_cum=exc, strict=True)  # (B, H, N, C, C), strictly lower
    G = scores.full(bc, k_keys, q_cum=exc, strict=True)
    P_a = scores.full(qc, a_keys)  # causal, diagonal included
    P_k = scores.full(qc, k_keys)
    # UT transform: [W U~] = (I - A)^{-1} [B_e, G V]
    eye = torch.eye(C, dtype=ct, device=q.device)
    T_ut = torch.linalg.solve_triangular(eye - A, eye.expand_as(A), upper=False, unitriangular=True)
    W, U = T_ut @ (bc * exc.exp()), T_ut @ (G @ vc)  # (B, H, N, C, Dk), (B, H, N, C, Dv)
    carry = (last - cum).exp()  # (B, H, N, C, Dk): decay from token j to the chunk's end
    a_dT = (ac * carry).transpose(-1, -2)  # (B, H, N, Dk, C)
    written = (kc * carry).transpose(-1, -2) @ vc  # (B, H, N, Dk, Dv): K_d^T V, what no read depends on
    chunk_decay = last.exp().transpose(-1, -2)  # (B, H, N, Dk, 1): Diag(exp(c_C))
    befores, pseudo = [], []
    # chunk views by unbind, whose backward stacks their gradients once (a slice's is a zero-filled copy
    # of the whole tensor): 1.00-1.16x forward + backward, measured
    chunks = (t.unbind(2) for t in (W, U, chunk_decay, a_dT, written))
    for W_c, U_c, decay_c, a_dT_c, written_c in zip(*chunks):
        befores.append(S)  # u_c = W_c S_c + U~_c, then S_{c+1} = Diag(exp(c_C)) S_c + A_d^T u_c + K_d^T V_c
        pseudo.append(W_c @ S + U_c)  # (B, H, C, Dv): the pseudo-values S_{i-1}^T beta_i
        S = decay_c * S + a_dT_c @ pseudo[-1] + written_c
    S_before = torch.stack(befores, dim=2)  # (B, H, N, Dk, Dv)
    y = (qc * cum.exp()) @ S_before + P_a @ torch.stack(pseudo, dim=2) + P_k @ vc  # (B, H, N, C, Dv)
    return y.reshape(B, H, N * C, Dv)[:, :, :T].to(v.dtype), S
