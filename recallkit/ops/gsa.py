"""Gated slot attention (GSA): a memory of M slots per head, read through a softmax over the slots.

Zhang, Yang, Zhu, et al. 2024, "Gated Slot Attention for Efficient Linear-Time Sequence Modeling",
arXiv 2409.07146. With a forget gate alpha_t = exp(g_t) in (0, 1)^M per slot and its complement as the
write weight s_t = 1 - alpha_t:

    K_t = Diag(alpha_t) K_{t-1} + s_t k_t^T        (M, Dk): the slots' keys
    V_t = Diag(alpha_t) V_{t-1} + s_t v_t^T        (M, Dv): the slots' values
    y_t = V_t^T softmax(K_t q_t)                   (Dv,): a softmax read over the M slots

q, k: (B, H, T, Dk); v: (B, H, T, Dv); g: (B, H, T, M), log-decays < 0 (g = 0 writes nothing and
keeps everything). The state is the pair (K, V): (B, H, M, Dk) and (B, H, M, Dv), kept in float32
(float64 for float64 inputs). GSA is two gated linear attentions joined by a softmax:

- pass 1, the slot scores z_t = K_t q_t: a GLA with key s_t, value k_t and the decay on the slot axis,
  which here is the axis of the output (the usual GLA decays the axis its query contracts);
- pass 2, y_t = V_t^T p_t with p_t = softmax(z_t): exactly the vector-gated GLA with query p_t, key
  s_t, value v_t and log-decays g_t (``gated_linear_attention_chunked``).

Two forms: :func:`gsa_recurrent`, the token loop (the spec), and :func:`gsa_chunked`, chunkwise
parallel for training and prefill (:func:`gsa_slot_scores_chunked` for pass 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

import recallkit.ops.gated_linear_attention as gla
from recallkit.ops.gated_linear_attention import _sub_chunk_for, gated_linear_attention_chunked
from recallkit.ops.member_fold import folds_members
from recallkit.ops.numerics import compute_dtype, masked_exp, paths_fixed
from recallkit.ops.segments import chunk_length, in_segments, segment_length

GSAState = tuple[Tensor, Tensor]


def _check_shapes(q: Tensor, k: Tensor, v: Tensor | None, g: Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or (v is not None and (v.dim() != 4 or v.shape[:3] != q.shape[:3])):
        raise ValueError(f"q, k must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {None if v is None else tuple(v.shape)}")
    if g.dim() != 4 or g.shape[:3] != q.shape[:3]:
        raise ValueError(f"g must be (B, H, T, M) with (B, H, T) = {tuple(q.shape[:3])} (one log-decay per "
                         f"slot); got {tuple(g.shape)}")


def init_gsa_state(q: Tensor, v: Tensor, num_slots: int) -> GSAState:
    """Zero slots (K (B, H, M, Dk), V (B, H, M, Dv)) for q (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = q.shape
    ct = compute_dtype(q)
    return (torch.zeros(B, H, num_slots, Dk, device=q.device, dtype=ct),
            torch.zeros(B, H, num_slots, v.shape[-1], device=q.device, dtype=ct))


def _write_weights(g: Tensor) -> Tensor:
    """s = 1 - exp(g), as -expm1(g): exact for the small |g| of slow-forgetting slots."""
    return -torch.expm1(g)


def gsa_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, state: GSAState | None = None
) -> tuple[Tensor, GSAState]:
    """Token-by-token recurrence (the reference).

    Args:
        q, k: queries and keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        g: log forget gates per slot, (B, H, T, M), <= 0.
        state: (K, V) from a previous call, (B, H, M, Dk) and (B, H, M, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state (K, V) after the last token, float32+.
    """
    _check_shapes(q, k, v, g)
    ct = compute_dtype(q)
    Ks, Vs = init_gsa_state(q, v, g.shape[-1]) if state is None else (s.to(ct) for s in state)
    q_, k_, v_, g_ = (t.to(ct) for t in (q, k, v, g))
    outputs = []
    for q_t, k_t, v_t, g_t in zip(*(t.unbind(2) for t in (q_, k_, v_, g_))):
        alpha, s = g_t.exp()[..., None], _write_weights(g_t)[..., None]  # (B, H, M, 1)
        Ks = alpha * Ks + s * k_t[..., None, :]  # Diag(alpha) K + s k^T, (B, H, M, Dk)
        Vs = alpha * Vs + s * v_t[..., None, :]  # Diag(alpha) V + s v^T, (B, H, M, Dv)
        p = torch.softmax(torch.einsum("bhmk,bhk->bhm", Ks, q_t), dim=-1)  # (B, H, M) over the slots
        outputs.append(torch.einsum("bhm,bhmv->bhv", p, Vs))
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), (Ks, Vs)


def _intra_slot_scores(qc: Tensor, kc: Tensor, sc: Tensor, cum: Tensor, sub: int) -> Tensor:
    """z_i = sum_{j<=i} (q_i . k_j) exp(c_i - c_j) ⊙ s_j inside each chunk, without overflow.

    The chunk splits into n = C / sub sub-chunks, and every decay factorises through b_I, c at the last
    row before i's sub-chunk I: exp(c_i - c_j) = exp(c_i - b_I) ⊙ exp(b_I - c_j), so
    z_i = exp(c_i - b_I) ⊙ sum_{j<=i} (q_i . k_j) (s_j ⊙ exp(b_I - c_j)): one GEMM per sub-chunk over every
    earlier j. The query factor is <= 1 (g <= 0). For j before I the key factor is split at the end e_J
    of j's sub-chunk J, exp(b_I - e_J) ⊙ exp(e_J - c_j), both <= 1, so there are n^2 + C exponentials
    per slot, not n C; for j inside I it is >= 1 (at most the sub-chunk's decay), used while that stays
    below ``gated_linear_attention._DIAG_GEMM_MAX_DECAY`` nats, else those pairs take the exact masked
    (sub, sub, M) form.

    Args:
        qc, kc: (..., C, Dk) chunked queries and keys; sc, cum: (..., C, M) write weights and chunk-local
            cumulative log-decays.
    Returns:
        (..., C, M) slot scores from a zero state at the chunk start.
    """
    *lead, C, M = sc.shape
    n = C // sub
    dev = qc.device
    ss, cs = (t.reshape(*lead, n, sub, M) for t in (sc, cum))  # (..., n, sub, M)
    ends = cs[..., -1, :]  # e_J: (..., n, M)
    ref = torch.cat([torch.zeros_like(ends[..., :1, :]), ends[..., :-1, :]], dim=-2)  # b_I = e_{I-1}
    gemm = (not paths_fixed() and bool(ref.numel())
            and bool((ref[..., None, :] - cs).amax() <= gla._DIAG_GEMM_MAX_DECAY))
    # exp(b_I - e_J) for J < I (J <= I on the GEMM path, where exp(b_I - e_I) <= exp(_DIAG_GEMM_MAX_DECAY))
    blocks = torch.ones(n, n, dtype=torch.bool, device=dev).tril(0 if gemm else -1)
    hop = masked_exp(ref[..., :, None, :] - ends[..., None, :, :], blocks[..., None])  # (..., n, n, M)
    s_end = ss * torch.exp(ends[..., None, :] - cs)  # s_j ⊙ exp(e_J - c_j): (..., n, sub, M)
    s_ref = (hop[..., :, :, None, :] * s_end[..., None, :, :, :]).reshape(*lead, n, C, M)  # (..., n, C, M)
    causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril(0 if gemm else -1)
    if not gemm:  # pairs inside a sub-chunk leave the GEMM for the exact form below
        block = torch.arange(C, device=dev) // sub
        causal &= block[:, None] != block[None, :]
    qk = (qc @ kc.transpose(-1, -2)).masked_fill(~causal, 0.0).reshape(*lead, n, sub, C)  # (..., n, sub, C)
    z = torch.exp(cs - ref[..., None, :]) * (qk @ s_ref)  # (..., n, sub, M)
    if not gemm:
        qs, ks = (t.reshape(*lead, n, sub, t.shape[-1]) for t in (qc, kc))  # (..., n, sub, Dk)
        tril = torch.ones(sub, sub, dtype=torch.bool, device=dev).tril()
        decay = masked_exp(cs[..., :, None, :] - cs[..., None, :, :], tril[..., None])  # (.., n, sub, sub, M)
        # a broadcast product: a three-operand einsum here runs ~10x slower on CPU (permutes)
        z = z + ((qs @ ks.transpose(-1, -2))[..., None] * decay * ss[..., None, :, :]).sum(-2)
    return z.reshape(*lead, C, M)


def gsa_slot_scores_chunked(
    q: Tensor, k: Tensor, g: Tensor, *, state: Tensor | None = None, chunk_size: int = 64,
    sub_chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Pass 1, chunkwise: the slot scores z_t = K_t q_t (before the softmax) and the final K.

    With chunk-local cumulative log-decays c_i (<= 0) and K before the chunk,
    K_i = Diag(exp(c_i)) K + sum_{j<=i} Diag(exp(c_i - c_j)) s_j k_j^T, hence
    z_i = exp(c_i) ⊙ (K q_i) + sum_{j<=i} (q_i . k_j) exp(c_i - c_j) ⊙ s_j (:func:`_intra_slot_scores`)
    and K' = Diag(exp(c_C)) K + (s ⊙ exp(c_C - c))^T k. Padding uses g = 0 (s = 0) and k = 0, which
    leaves K untouched.

    Args:
        q, k: (B, H, T, Dk); g: (B, H, T, M), <= 0; state: K (B, H, M, Dk) or None for zeros.
    Returns:
        z (B, H, T, M) and K (B, H, M, Dk), both float32+.
    """
    _check_shapes(q, k, None, g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    B, H, T, Dk = q.shape
    M = g.shape[-1]
    Ks = q.new_zeros(B, H, M, Dk, dtype=ct) if state is None else state.to(ct)
    if T == 0:
        return q.new_zeros(B, H, 0, M, dtype=ct), Ks
    if T > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(gsa_slot_scores_chunked, {"q": q, "k": k, "g": g}, state=Ks,
                           length=segment_length(chunk_size), chunk_size=chunk_size,
                           sub_chunk_size=sub_chunk_size)
    q_, k_, g_ = (t.to(ct) for t in (q, k, g))
    C = chunk_length(T, chunk_size, sub_chunk_size)
    pad = (-T) % C
    if pad:
        q_, k_, g_ = (F.pad(t, (0, 0, 0, pad)) for t in (q_, k_, g_))
    N = q_.shape[2] // C
    qc, kc, gc = (t.reshape(B, H, N, C, t.shape[-1]) for t in (q_, k_, g_))  # (B, H, N, C, .)
    sc = _write_weights(gc)  # (B, H, N, C, M)
    cum = torch.cumsum(gc, dim=3)  # chunk-local, <= 0
    last = cum[:, :, :, -1:]  # (B, H, N, 1, M): log-decay over the whole chunk
    intra = _intra_slot_scores(qc, kc, sc, cum, _sub_chunk_for(cum, sub_chunk_size))  # (B, H, N, C, M)
    chunk_sk = (sc * torch.exp(last - cum)).transpose(-1, -2) @ kc  # (B, H, N, M, Dk): written by the chunk
    chunk_decay = torch.exp(last).transpose(-1, -2)  # (B, H, N, M, 1)
    befores = []
    for c in range(N):  # K_{c+1} = Diag(exp(c_C)) K_c + chunk_sk_c
        befores.append(Ks)
        Ks = chunk_decay[:, :, c] * Ks + chunk_sk[:, :, c]
    K_before = torch.stack(befores, dim=2)  # (B, H, N, M, Dk)
    z = torch.exp(cum) * (qc @ K_before.transpose(-1, -2)) + intra  # (B, H, N, C, M)
    return z.reshape(B, H, N * C, M)[:, :, :T], Ks


@folds_members
def gsa_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, state: GSAState | None = None, chunk_size: int = 64,
    sub_chunk_size: int = 8,
) -> tuple[Tensor, GSAState]:
    """Chunkwise-parallel GSA: pass 1 (:func:`gsa_slot_scores_chunked`), the softmax over the slots, then
    pass 2 as ``gated_linear_attention_chunked`` with query p, key s = 1 - exp(g), value v and the same
    log-decays g (its state is V). Same arguments and returns as :func:`gsa_recurrent`, plus
    ``chunk_size`` and ``sub_chunk_size`` (both passes)."""
    _check_shapes(q, k, v, g)
    K0, V0 = (None, None) if state is None else state
    z, Ks = gsa_slot_scores_chunked(q, k, g, state=K0, chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)
    p = torch.softmax(z, dim=-1)  # (B, H, T, M), float32+
    if V0 is None:
        V0 = torch.zeros(*v.shape[:2], g.shape[-1], v.shape[-1], device=v.device, dtype=p.dtype)
    y, Vs = gated_linear_attention_chunked(p, _write_weights(g.to(p.dtype)), v, g.to(p.dtype), state=V0,
                                           chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)
    return y, (Ks, Vs)
