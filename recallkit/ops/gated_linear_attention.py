"""Gated linear attention: S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  y_t = S_t^T q_t.

One kernel family covers the decaying linear-attention mixers (docs/design.md section 4):

- vector gate, g: (B, H, T, Dk), one log-decay per key channel (GLA, Yang et al. 2023);
- scalar gate, g: (B, H, T), one log-decay per head broadcast over Dk (RetNet's fixed gamma,
  Mamba-2/SSD's data-dependent a_t, "simple GLA").

g is a log-decay, expected <= 0 (decays in (0, 1]); that is what makes the chunked form below safe.
q, k: (B, H, T, Dk); v: (B, H, T, Dv); the state S: (B, H, Dk, Dv), kept in float32 (float64 for
float64 inputs). Unrolled, y_i = sum_{j<=i} (q_i ⊙ exp(c_i - c_j))^T k_j v_j with c the cumulative
sum of g. Three forms:

- :func:`gated_linear_attention_recurrent`: the token loop, the spec;
- :func:`gated_linear_attention_quadratic`: the masked (T, T) form from a zero state;
- :func:`gated_linear_attention_chunked`: chunkwise parallel, the fast path for training and prefill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.member_fold import folds_members
from recallkit.ops.numerics import compute_dtype, masked_exp, paths_fixed
from recallkit.ops.segments import chunk_length, in_segments, segment_length


def _check_gate(q: Tensor, g: Tensor) -> bool:
    """True for a scalar-per-head gate (B, H, T); checks the shapes."""
    if g.shape == q.shape[:3]:
        return True
    if g.shape == q.shape:
        return False
    raise ValueError(f"gate g must be (B, H, T) or (B, H, T, Dk) = {tuple(q.shape)}; got {tuple(g.shape)}")


def init_gla_state(q: Tensor, v: Tensor) -> Tensor:
    """Zero state (B, H, Dk, Dv) for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = q.shape
    return torch.zeros(B, H, Dk, v.shape[-1], device=q.device, dtype=compute_dtype(q))


def gated_linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        q, k: queries and keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        g: log-decays, (B, H, T, Dk) per key channel or (B, H, T) per head.
        state: S from a previous call, (B, H, Dk, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state S after the last token (B, H, Dk, Dv), float32+.
    """
    scalar = _check_gate(q, g)
    ct = compute_dtype(q)
    S = init_gla_state(q, v) if state is None else state.to(ct)
    q_, k_, v_, g_ = (t.to(ct) for t in (q, k, v, g))
    if scalar:
        g_ = g_.unsqueeze(-1)  # (B, H, T, 1): broadcast over Dk
    outputs = []
    for q_t, k_t, v_t, g_t in zip(*(t.unbind(2) for t in (q_, k_, v_, g_))):
        S = g_t.exp()[..., None] * S + k_t[..., :, None] * v_t[..., None, :]  # (B, H, Dk, Dv)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), S


def gated_linear_attention_quadratic(q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
    """Masked quadratic form from a zero state: y_i = sum_{j<=i} (q_i ⊙ exp(c_i - c_j))^T k_j v_j.

    The scalar gate costs one (T, T) decay matrix (the SSD "segsum" form); the vector gate builds a
    (T, T, Dk) tensor and is meant as a test reference on tiny shapes only. The cumulative sum runs
    over the whole sequence, so in float32 it loses precision for long T (the chunked form does not).

    Args:
        q, k: (B, H, T, Dk); v: (B, H, T, Dv); g: (B, H, T) or (B, H, T, Dk).
    Returns:
        y (B, H, T, Dv) in v's dtype.
    """
    scalar = _check_gate(q, g)
    ct = compute_dtype(q)
    q_, k_, v_ = (t.to(ct) for t in (q, k, v))
    cum = torch.cumsum(g.to(ct), dim=2)  # (B, H, T[, Dk])
    T = q.shape[2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if scalar:
        decay = masked_exp(cum[..., :, None] - cum[..., None, :], causal)  # (B, H, T, T)
        scores = (q_ @ k_.transpose(-1, -2)) * decay
    else:
        decay = masked_exp(cum[:, :, :, None] - cum[:, :, None], causal[..., None])  # (B, H, T, T, Dk)
        scores = (q_[:, :, :, None] * k_[:, :, None] * decay).sum(-1)
    return (scores @ v_).to(v.dtype)


def _sub_chunk(chunk_size: int, target: int) -> int:
    """Largest divisor of ``chunk_size`` that is <= ``target`` (the sub-chunk of the vector gate)."""
    if chunk_size < 1 or target < 1:
        raise ValueError(f"chunk_size and sub_chunk_size must be >= 1; got {chunk_size}, {target}")
    return max(d for d in range(1, min(chunk_size, target) + 1) if chunk_size % d == 0)


def _sub_chunk_for(cum: Tensor, target: int) -> int:
    """The sub-chunk for scores over chunk-local cumulative log-decays ``cum`` (..., C, D): the whole
    chunk while every decay in it stays within ``_DIAG_GEMM_MAX_DECAY`` nats, so that the scores are
    one (C, C) GEMM per chunk as the scalar gate's (every chunk of the call must qualify: one host
    sync), else the largest divisor of C that is <= ``target`` (always, under ``fixed_paths``)."""
    C = cum.shape[-2]
    sub = _sub_chunk(C, target)
    if _WHOLE_CHUNK_GEMM and not paths_fixed() and cum.numel():
        low, high = torch.aminmax(cum)  # |cum| bounds exp(c) and exp(-c) alike, even if some g > 0
        if bool(torch.maximum(-low, high) <= _DIAG_GEMM_MAX_DECAY):
            return C
    return sub


class _VectorGateScores:
    """Intra-chunk scores sum_d x_id y_jd exp(cx_id - c_jd) for a per-channel gate, never exponentiating a
    positive number beyond a bounded one.

    c (``cum``, (..., N, C, Dk)) is the keys' chunk-local cumulative log-decay, non-increasing along the
    chunk (g <= 0); the queries' cx is c itself (the usual scores) or any cx_i <= c_j for every scored
    pair, e.g. c shifted down a row (the decay before token i, RWKV-7's). The chunk is split into
    n = C / sub sub-chunks. For a pair in different sub-chunks (j before sub-chunk I of i) the decay
    factorises through the reference b_I = c at the last row before sub-chunk I:
    exp(cx_i - c_j) = exp(cx_i - b_I) * exp(b_I - c_j), and both exponents are <= 0 (i comes after the
    reference, j at or before it), so the factors lie in (0, 1]; the key factor is itself split at the
    end e_J of j's sub-chunk J, exp(b_I - c_j) = exp(b_I - e_J) exp(e_J - c_j), both <= 1 again, so the
    exponentials number n^2 + C per channel and chunk, not n C. Safe for any gate magnitude, where the
    usual q*exp(c), k*exp(-c) trick overflows float32 once a chunk's total decay passes ~exp(-88).
    Pairs inside one sub-chunk use a GEMM through the same reference while that is safe (the
    sub-chunk's decay below ``_DIAG_GEMM_MAX_DECAY``), else the exact masked (sub, sub, Dk) form.
    Everything that depends only on c is computed once, in the constructor, and shared by every key
    set (:meth:`keys`) and query set (:meth:`scores`) scored with it.
    """

    def __init__(self, cum: Tensor, sub: int) -> None:
        *self.lead, C, Dk = cum.shape
        self.sub, self.n = sub, C // sub
        self.cs = cum.reshape(*self.lead, self.n, sub, Dk)  # (..., N, n, sub, Dk)
        ends = self.cs[..., -1, :]  # e_J, c at the last row of sub-chunk J: (..., N, n, Dk)
        self.ref = torch.cat([torch.zeros_like(ends[..., :1, :]), ends[..., :-1, :]], dim=-2)  # b_I = e_{I-1}
        rise = self.ref[..., None, :] - self.cs  # b_I - c_j >= 0 inside sub-chunk I, (..., N, n, sub, Dk)
        self.gemm = (not paths_fixed() and bool(rise.numel())
                     and bool(rise.amax() <= _DIAG_GEMM_MAX_DECAY))
        self.rise = rise.exp() if self.gemm else None
        if self.n > 1:
            self.to_end = torch.exp(ends[..., None, :] - self.cs)  # exp(e_J - c_j) <= 1
            earlier = torch.ones(self.n, self.n, dtype=torch.bool, device=cum.device).tril(-1)  # J < I
            self.hop = masked_exp(self.ref[..., :, None, :] - ends[..., None, :, :], earlier[..., None])

    def keys(self, k: Tensor) -> tuple[Tensor, Tensor | None]:
        """Keys (..., N, C, Dk) prepared for :meth:`scores`: as seen inside their sub-chunk (times
        exp(b_I - c_j) on the GEMM path) and from every later sub-chunk's reference ((..., N, n, C, Dk),
        None for one sub-chunk)."""
        ks = k.reshape(*self.lead, self.n, self.sub, k.shape[-1])
        inside = ks * self.rise if self.gemm else ks
        if self.n == 1:
            return inside, None
        k_end = ks * self.to_end  # (..., N, n, sub, Dk): keys carried to their sub-chunk's end
        k_ref = (self.hop[..., :, :, None, :] * k_end[..., None, :, :, :])  # (..., N, n, n, sub, Dk)
        return inside, k_ref.reshape(*self.lead, self.n, self.n * self.sub, k.shape[-1])

    def scores(self, q: Tensor, keys: tuple[Tensor, Tensor | None], *, q_cum: Tensor | None = None,
               strict: bool = False) -> tuple[Tensor | None, Tensor]:
        """Scores of queries q (..., N, C, Dk), or (S, ..., N, C, Dk) for S query sets, against
        ``keys(k)``, with the queries' cumulative decays ``q_cum`` (default: c; shaped like q or like c).

        Returns:
            A_off (..., N, C, C), the scores across sub-chunks (None for one sub-chunk), and A_diag
            (..., N, n, sub, sub), the scores inside each sub-chunk, causal (j <= i, or j < i when
            ``strict``), zero above (with q's leading S, if any).
        """
        n, sub, C, Dk = self.n, self.sub, q.shape[-2], q.shape[-1]
        q_lead = q.shape[:-2]
        qs = q.reshape(*q_lead, n, sub, Dk)
        qcs = self.cs if q_cum is None else q_cum.reshape(*q_cum.shape[:-2], n, sub, Dk)
        q_ref = qs * torch.exp(qcs - self.ref[..., None, :])  # (..., N, n, sub, Dk), exponent <= 0
        inside, k_ref = keys
        tril = torch.ones(sub, sub, dtype=torch.bool, device=q.device).tril(-1 if strict else 0)
        if self.gemm:
            a_diag = _shared_keys_matmul(q_ref, inside.transpose(-1, -2)).masked_fill(~tril, 0.0)
        else:
            decay = masked_exp(qcs[..., :, None, :] - self.cs[..., None, :, :], tril[..., None])
            a_diag = (qs[..., :, None, :] * inside[..., None, :, :] * decay).sum(-1)  # (..., n, sub, sub)
        if k_ref is None:
            return None, a_diag
        a_off = _shared_keys_matmul(q_ref, k_ref.transpose(-1, -2))  # (..., N, n, sub, C)
        return a_off.reshape(*q_lead, C, C), a_diag

    def full(self, q: Tensor, keys: tuple[Tensor, Tensor | None], *, q_cum: Tensor | None = None,
             strict: bool = False) -> Tensor:
        """:meth:`scores` as one (..., N, C, C) matrix, zero above the diagonal."""
        a_off, a_diag = self.scores(q, keys, q_cum=q_cum, strict=strict)
        n, sub = self.n, self.sub
        if a_off is None:
            return a_diag.reshape(*a_diag.shape[:-3], sub, sub)
        eye = torch.eye(n, dtype=a_diag.dtype, device=q.device)[:, None, :, None]  # (n, 1, n, 1)
        return a_off + (a_diag[..., :, :, None, :] * eye).reshape(*a_diag.shape[:-3], n * sub, n * sub)


# Inside a sub-chunk the decays factorise through b_I as well, exp(c_i - c_j) = exp(c_i - b_I) exp(b_I - c_j),
# but exp(b_I - c_j) >= 1: a GEMM is safe while the sub-chunk's largest decay stays below this many
# nats (exp(40) ~ 2e17, far from float32's ~3e38); beyond it the exact masked (sub, sub, Dk) form runs.
# A whole chunk within the bound is one sub-chunk (``_sub_chunk_for``): the scores are then the plain
# q exp(c), k exp(-c) GEMM; a chunk beyond it is split, and each sub-chunk checked against it again.
_DIAG_GEMM_MAX_DECAY = 40.0
# Whether a chunk whose decays stay within that bound is scored as one sub-chunk (tests turn it off to
# reach the sub-chunk paths with small decays).
_WHOLE_CHUNK_GEMM = True


def _shared_keys_matmul(a: Tensor, b: Tensor) -> Tensor:
    """a @ b where a may carry one leading dim S that b lacks, (S, ..., M, K) @ (..., K, P): S is folded
    into a's rows so that b is not copied S times (a broadcast batched matmul would expand it)."""
    if a.dim() == b.dim():
        return a @ b
    S, *lead, M, K = a.shape
    folded = a.movedim(0, -3).reshape(*lead, S * M, K) @ b  # (..., S M, P)
    return folded.reshape(*lead, S, M, b.shape[-1]).movedim(-3, 0)


@folds_members
def gated_linear_attention_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, *, state: Tensor | None = None, chunk_size: int = 64,
    sub_chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form: masked decayed scores inside a chunk, the decayed state across chunks.

    For chunk c with chunk-local cumulative gates c_i (float32, from the chunk start, so <= 0 and
    never large-and-positive) and state S before it:
    Y = (Q ⊙ exp(c)) S + A V with A[i, j] = (q_i ⊙ exp(c_i - c_j))^T k_j for j <= i, and
    S' = diag(exp(c_last)) S + (K ⊙ exp(c_last - c))^T V; these exponents are <= 0 for g <= 0.
    The scalar gate's A is (Q K^T) ⊙ exp(segsum) (SSD); the vector gate's A comes from
    :class:`_VectorGateScores`: one GEMM (Q ⊙ exp(c)) (K ⊙ exp(-c))^T per chunk while every chunk of
    the call (each 512-token segment, all rows and heads) stays within ``_DIAG_GEMM_MAX_DECAY`` nats, so
    no exponent exceeds 40; else sub-chunks of the largest divisor of chunk_size <= sub_chunk_size.
    The states cross chunks in a loop of T / chunk_size cheap steps; everything else is batched GEMMs.
    Precision after a strong decay: the scalar gate forms c_i - c_j and c_last - c in float64, so one
    token's reset (g = -1e3 or -1e6) leaves the float32 error at the loop's (~3e-7 relative). The vector
    gate forms them from float32 sums: after a token with g_d = -G, later exponents carry ulp(G)
    (relative error ~ 6e-8 G: 3e-5 at G = 1e3); realistic gates (|g| < 20 per token) stay at ~1e-6.
    Same arguments and returns as :func:`gated_linear_attention_recurrent`.
    """
    scalar = _check_gate(q, g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    B, H, T, _ = q.shape  # q: (B, H, T, Dk)
    S = init_gla_state(q, v) if state is None else state.to(ct)
    if T == 0:
        return v[:, :, :0], S
    if T > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(gated_linear_attention_chunked, {"q": q, "k": k, "v": v, "g": g}, state=S,
                           length=segment_length(chunk_size), chunk_size=chunk_size,
                           sub_chunk_size=sub_chunk_size)
    q_, k_, v_, g_ = (t.to(ct) for t in (q, k, v, g))
    if scalar:
        g_ = g_.unsqueeze(-1)  # (B, H, T, 1)
    C = chunk_length(T, chunk_size, 1 if scalar else sub_chunk_size)
    pad = (-T) % C
    if pad:  # zero keys/values and zero log-decay leave the state untouched; padded rows are dropped
        q_, k_, v_, g_ = (F.pad(t, (0, 0, 0, pad)) for t in (q_, k_, v_, g_))
    N = q_.shape[2] // C
    qc, kc, vc, gc = (t.reshape(B, H, N, C, t.shape[-1]) for t in (q_, k_, v_, g_))
    cum = torch.cumsum(gc, dim=3)  # (B, H, N, C, Dk or 1), chunk-local, <= 0
    last = cum[:, :, :, -1:]  # (B, H, N, 1, Dk or 1): log-decay over the whole chunk
    if scalar:
        # The differences c_i - c_j in float64: after one strong decay (a reset) both are large, and
        # a float32 running sum would round each to ulp(|c|) (error 3e-5 at g = -1e3 in one token).
        c64 = torch.cumsum(gc.squeeze(-1), dim=3, dtype=torch.float64)  # (B, H, N, C)
        tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        segsum = (c64[..., :, None] - c64[..., None, :]).to(ct)  # (B, H, N, C, C): c_i - c_j
        scores = (qc @ kc.transpose(-1, -2)) * masked_exp(segsum, tril)
        intra = scores @ vc  # (B, H, N, C, Dv)
        to_end = (c64[..., -1:] - c64).to(ct).unsqueeze(-1)  # (B, H, N, C, 1): c_last - c
    else:
        sub = _sub_chunk_for(cum, sub_chunk_size)
        scores = _VectorGateScores(cum, sub)
        a_off, a_diag = scores.scores(qc, scores.keys(kc))
        n = C // sub
        intra = (a_diag @ vc.reshape(B, H, N, n, sub, -1)).reshape(B, H, N, C, -1)
        if a_off is not None:
            intra = intra + a_off @ vc
        to_end = last - cum
    chunk_kv = (kc * torch.exp(to_end)).transpose(-1, -2) @ vc  # (B, H, N, Dk, Dv)
    chunk_decay = torch.exp(last).transpose(-1, -2)  # (B, H, N, Dk or 1, 1)
    befores = []
    for c in range(N):  # S_{c+1} = diag(exp(c_last)) S_c + chunk_kv_c
        befores.append(S)
        S = chunk_decay[:, :, c] * S + chunk_kv[:, :, c]
    S_before = torch.stack(befores, dim=2)  # (B, H, N, Dk, Dv)
    y = (qc * torch.exp(cum)) @ S_before + intra  # (B, H, N, C, Dv)
    return y.reshape(B, H, N * C, -1)[:, :, :T].to(v.dtype), S
