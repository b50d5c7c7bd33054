"""The delta rule: S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,  y_t = S_t^T q_t.

DeltaNet (Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear Transformers with the Delta Rule
over Sequence Length", arXiv 2406.06484) is the case g = 0: each token first reads the value the
state stores under its key, S_{t-1}^T k_t, and replaces it by beta_t v_t + (1 - beta_t) S_{t-1}^T k_t
(for a unit key): an online regression step instead of linear attention's pure accumulation.
Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta
Rule", arXiv 2412.06464) adds a scalar log-decay g_t <= 0 per head that shrinks the whole state.

q, k: (B, H, T, Dk); v: (B, H, T, Dv); beta: (B, H, T) in [0, 1]; g: (B, H, T) or None; the state
S: (B, H, Dk, Dv), kept in float32 (float64 for float64 inputs). Keys should be L2-normalised:
with ||k|| = 1 and beta in [0, 1] the transition I - beta k k^T is a contraction. Two forms:

- :func:`delta_rule_recurrent`: the token loop, the spec;
- :func:`delta_rule_chunked`: the chunkwise WY / UT-transform form, the fast path for training and
  prefill (with chunk_size >= T it is the one-chunk quadratic form from the given state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.numerics import compute_dtype, masked_exp, paths_fixed
from recallkit.ops.segments import chunk_length, in_segments, segment_length


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None) -> None:
    if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    for name, x in (("beta", beta), ("g", g)):
        if x is not None and x.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, H, T) = {tuple(q.shape[:3])}; got {tuple(x.shape)}")


def init_delta_state(q: Tensor, v: Tensor) -> Tensor:
    """Zero state (B, H, Dk, Dv) for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv)."""
    B, H, _, Dk = q.shape
    return torch.zeros(B, H, Dk, v.shape[-1], device=q.device, dtype=compute_dtype(q))


def delta_rule_recurrent(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        q, k: queries and (L2-normalised) keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        beta: writing strengths, (B, H, T), in [0, 1].
        g: log-decays per head, (B, H, T), <= 0; None for plain DeltaNet.
        state: S from a previous call, (B, H, Dk, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state S after the last token (B, H, Dk, Dv), float32+.
    """
    _check_shapes(q, k, v, beta, g)
    ct = compute_dtype(q)
    S = init_delta_state(q, v) if state is None else state.to(ct)
    q_, k_, v_, b_ = (t.to(ct) for t in (q, k, v, beta))
    outputs = []
    for t in range(q.shape[2]):
        k_t, b_t = k_[:, :, t], b_[:, :, t, None, None]  # (B, H, Dk), (B, H, 1, 1)
        if g is not None:
            S = g[:, :, t, None, None].to(ct).exp() * S
        # the gated update exp(g)(I - b k k^T) S + b k v^T, written as a decayed S then a delta step
        read = torch.einsum("bhk,bhkv->bhv", k_t, S)  # S^T k: what the key currently retrieves
        S = S + b_t * k_t[..., :, None] * (v_[:, :, t] - read)[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_[:, :, t], S))
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), S


def delta_rule_chunked(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, *, state: Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form with the WY / UT transform (Yang et al. 2024, section 3).

    Write the update as S_t = a_t S_{t-1} + k_t u_t^T with the "pseudo-value"
    u_t = beta_t (v_t - a_t S_{t-1}^T k_t), a_t = exp(g_t). Inside a chunk with state S before it and
    chunk-local cumulative log-decays c_i (<= 0), Gamma_ij = exp(c_i - c_j) for j <= i, unrolling gives
    u_i = beta_i (v_i - exp(c_i) S^T k_i - sum_{j<i} Gamma_ij (k_i^T k_j) u_j), i.e. the unit lower
    triangular system (I + L) U' = diag(beta) (V - diag(exp(c)) K S) with
    L = strictly_lower(diag(beta) (K K^T ⊙ Gamma)). Its solution is U' = U - W S, where the UT
    transform gives U = (I + L)^{-1} diag(beta) V and W = (I + L)^{-1} diag(beta exp(c)) K, so
    U' = (I + L)^{-1} diag(beta) (V - diag(exp(c)) K S). (I + L)^{-1} comes from one triangular solve for
    all chunks with I as its right-hand side (solving with [K V] as the right-hand side instead runs
    at about 20 GFLOP/s, measured). Then the loop over chunks runs five small GEMMs each:
    U' = (I + L)^{-1} (diag(beta) V - diag(beta exp(c)) K S), Y = diag(exp(c)) Q S + ((Q K^T) ⊙ Gamma) U'
    and S' = exp(c_C) S + K^T diag(exp(c_C - c)) U'. On (C, D) slices that stay in cache these run
    near twice the FLOP rate of the same GEMMs batched over all chunks, and need no W, no stacked S
    and no decayed copies of Q and K: 1.06-1.46x faster without a gradient than forming W, U and Y
    batched (0.92-1.20x with one; unbinding the chunk views, below, then gained 1.05-1.24x with one),
    measured. (Forming the chunk's transition exp(c_C) I - K_d^T W to make the loop one GEMM costs
    two more GEMMs per chunk: 1.2-1.5x slower, measured.)
    The default chunk is 32: it halves the (C, C) work per token and quarters the solve's for twice the
    loop's iterations, 1.1-1.6x faster than 64 at head sizes 16-64 with or without a gradient (measured).
    With g None every decay factor is 1 (plain DeltaNet). Padding of a partial last chunk uses
    beta = 0, g = 0, k = v = 0, which leaves the state untouched.
    Same arguments and returns as :func:`delta_rule_recurrent`, plus ``chunk_size``.
    """
    _check_shapes(q, k, v, beta, g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    S = init_delta_state(q, v) if state is None else state.to(ct)
    if T == 0:
        return v[:, :, :0], S
    if T > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(delta_rule_chunked, {"q": q, "k": k, "v": v, "beta": beta, "g": g}, state=S,
                           length=segment_length(chunk_size), chunk_size=chunk_size)
    q_, k_, v_, b_ = (t.to(ct) for t in (q, k, v, beta))
    g_ = None if g is None else g.to(ct)
    C = chunk_length(T, chunk_size)
    pad = (-T) % C
    if pad:
        q_, k_, v_ = (F.pad(t, (0, 0, 0, pad)) for t in (q_, k_, v_))
        b_ = F.pad(b_, (0, pad))
        g_ = None if g_ is None else F.pad(g_, (0, pad))
    N = q_.shape[2] // C
    # (B H, N, C, D): batch and heads flattened, so a chunk's slice [:, c] is a strided GEMM batch
    qc, kc, vc = (t.reshape(B * H, N, C, t.shape[-1]) for t in (q_, k_, v_))
    # a segment of a longer sequence is a strided view that each 4-D matmul would copy to fold (B H, N)
    # into one batch: K, read by two of them, is copied once here (1.0x when already contiguous)
    kc = kc.contiguous()
    kb = kc * b_.reshape(B * H, N, C, 1)  # diag(beta) K
    vb = vc * b_.reshape(B * H, N, C, 1)  # diag(beta) V
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    kk = kb @ kc.transpose(-1, -2)  # (B H, N, C, C): beta_i k_i^T k_j
    qk = qc @ kc.transpose(-1, -2)  # (B H, N, C, C)
    if g_ is not None:
        # the sums and their differences in float64: after a strong decay c_i and c_j are both large,
        # and float32 sums would round each to ulp(|c|), an error c_i - c_j keeps
        c64 = torch.cumsum(g_.reshape(B * H, N, C), dim=-1, dtype=torch.float64)  # chunk-local, <= 0
        cum = c64.to(ct)
        diff = (c64[..., :, None] - c64[..., None, :]).to(ct)  # (B H, N, C, C), fresh: masked in place
        gamma = masked_exp(diff, tril) if paths_fixed() else diff.masked_fill_(~tril, float("-inf")).exp_()
        # in place saves (C, C) passes per chunk (1.06-1.2x at N = 512); under torch.func (fixed
        # paths) gamma may be batched where kk and qk are not, so there the products are fresh
        kk, qk = (kk.mul_(gamma), qk.mul_(gamma)) if not paths_fixed() else (kk * gamma, qk * gamma)
        e_c = cum.exp()[..., None]  # (B H, N, C, 1)
        kb_w = kb * e_c  # diag(beta exp(c)) K
        to_end = (c64[..., -1:] - c64).to(ct).exp()[..., None]  # (B H, N, C, 1)
        chunk_decay = cum[..., -1].exp()[..., None, None]  # (B H, N, 1, 1)
    else:
        qk = qk.masked_fill_(~tril, 0.0)  # causal incl. the diagonal
        kb_w, e_c, to_end, chunk_decay = kb, None, None, None
    eye = torch.eye(C, dtype=ct, device=q.device)
    # the solve reads only kk's strict lower triangle (unitriangular: the diagonal is taken as 1), so
    # I + L needs no tril or added identity; its gradient reaches that triangle alone
    T_ut = torch.linalg.solve_triangular(kk, eye.expand_as(kk), upper=False,
                                         unitriangular=True)  # (I + L)^{-1}, (B H, N, C, C)
    ys, S = [], S.reshape(B * H, Dk, Dv)
    # chunk views by unbind: its backward stacks the chunks' gradients once, where slicing [:, c] gives
    # each chunk's gradient as a zero-filled copy of the whole tensor (1.05-1.24x forward + backward)
    T_uts, vbs, kb_ws, qcs, qks, kts = (t.unbind(1) for t in (T_ut, vb, kb_w, qc, qk, kc.transpose(-1, -2)))
    e_cs, to_ends, decays = (None,) * 3 if e_c is None else (t.unbind(1) for t in (e_c, to_end, chunk_decay))
    for c in range(N):  # (C, D) slices: the decays scale small products, not whole copies of Q and K
        u_new = T_uts[c] @ torch.baddbmm(vbs[c], kb_ws[c], S, alpha=-1)  # U', (B H, C, Dv)
        inter = qcs[c] @ S if e_c is None else (qcs[c] @ S) * e_cs[c]  # diag(exp(c)) Q S
        ys.append(torch.baddbmm(inter, qks[c], u_new))  # y = diag(exp(c)) Q S + P U'
        if e_c is None:
            S = torch.baddbmm(S, kts[c], u_new)
        else:  # S' = exp(c_C) S + K^T diag(exp(c_C - c)) U'
            S = torch.baddbmm(S * decays[c], kts[c], u_new * to_ends[c])
    y = torch.stack(ys, dim=1)  # (B H, N, C, Dv)
    return y.reshape(B, H, N * C, Dv)[:, :, :T].to(v.dtype), S.view(B, H, Dk, Dv)
