"""Longhorn's selective update: the closed-form online-learning step of a diagonal state space model.

Per inner channel d with N states (Liu, Wang, Wu, Feng, Stone & Liu 2024, "Longhorn: State Space
Models are Amortized Online Learners", arXiv 2407.14207, section 3), with key k_t and query q_t:

    Δ_t = β_t / (1 + β_t k_t^T k_t),                                     Δ_t, β_t: (Dn,)
    S_t = S_{t-1} ⊙ (1 - Δ_t ⊗ k_t^2) + (Δ_t ⊙ x_t) ⊗ k_t,              S: (Dn, N)
    y_t = S_t q_t + D ⊙ x_t

Row d of S is the weight vector of an online regressor from k to x_d, updated by the implicit
(proximal) step on ||s - s_prev||^2 + β_t (s^T k_t - x_t)^2 with its Hessian kept on the diagonal:
the forget factor 1 - Δ k^2 comes from the key, there is no A and no separate forget gate. Every
factor lies in (0, 1] for β in [0, 1]: 1 - Δ_d k_n^2 = (1 + β_d (|k|^2 - k_n^2)) / (1 + β_d |k|^2).

Layout: the model layout, time second, as the selective scan (``recallkit.ops.selective_scan``).
x, β: (B, L, Dn) with β in [0, 1]; k, q: (B, L, N), shared by all channels; D: (Dn,) or None. The
state S is (B, Dn, N), kept in float32 (float64 for float64 inputs). Two forms, same signature:

- :func:`longhorn_recurrent`: the token loop, the spec;
- :func:`longhorn_chunked`: chunkwise parallel, the fast path for training and prefill.

Why not ``selective_scan_chunked``: its decay is exp(dt_d A_dn), a per-channel step times a constant
per (channel, state); Longhorn's log-decay log(1 - Δ_d k_n^2) depends on the token through both d
and n and does not factor that way, so the chunked form here carries its own decay products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.numerics import compute_dtype


def _check_shapes(x: Tensor, beta: Tensor, k: Tensor, q: Tensor) -> None:
    if x.dim() != 3 or beta.shape != x.shape:
        raise ValueError(f"x and beta must both be (B, L, Dn); got {tuple(x.shape)}, {tuple(beta.shape)}")
    if k.dim() != 3 or q.shape != k.shape or k.shape[:2] != x.shape[:2]:
        raise ValueError(f"k and q must be (B, L, N) with x's (B, L) = {tuple(x.shape[:2])}; "
                         f"got {tuple(k.shape)}, {tuple(q.shape)}")


def init_longhorn_state(x: Tensor, k: Tensor) -> Tensor:
    """Zero state (B, Dn, N) for inputs x (B, L, Dn) and keys k (B, L, N)."""
    return torch.zeros(x.shape[0], x.shape[2], k.shape[2], device=x.device, dtype=compute_dtype(x))


def _step_sizes(beta: Tensor, k: Tensor) -> Tensor:
    """Δ = β / (1 + β k^T k), (B, L, Dn): the implicit step's effective learning rate per channel."""
    return beta / (1 + beta * k.square().sum(-1, keepdim=True))


def longhorn_recurrent(
    x: Tensor, beta: Tensor, k: Tensor, q: Tensor, D: Tensor | None = None, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        x: inputs (the regression targets), (B, L, Dn).
        beta: learning rates in [0, 1], (B, L, Dn).
        k, q: keys and queries, (B, L, N).
        D: skip gain, (Dn,), or None.
        state: S from a previous call, (B, Dn, N), or None for zeros.
    Returns:
        y (B, L, Dn) in x's dtype and the state S after the last token, (B, Dn, N), float32+.
    """
    _check_shapes(x, beta, k, q)
    ct = compute_dtype(x)
    S = init_longhorn_state(x, k) if state is None else state.to(ct)
    x_, b_, k_, q_ = (t.to(ct) for t in (x, beta, k, q))
    delta = _step_sizes(b_, k_)  # (B, L, Dn)
    outputs = []
    # unbind: one stack in backward, where indexing per token would build a full-size gradient each
    for x_t, d_t, k_t, q_t in zip(*(t.unbind(1) for t in (x_, delta, k_, q_))):
        forget = 1 - d_t[:, :, None] * k_t.square()[:, None, :]  # (B, Dn, N), in (0, 1]
        S = forget * S + (d_t * x_t)[:, :, None] * k_t[:, None, :]
        outputs.append(torch.einsum("bdn,bn->bd", S, q_t))
    y = torch.stack(outputs, dim=1) if outputs else x_[:, :0]
    if D is not None:
        y = y + D.to(ct) * x_
    return y.to(x.dtype), S


def longhorn_chunked(
    x: Tensor, beta: Tensor, k: Tensor, q: Tensor, D: Tensor | None = None, *,
    state: Tensor | None = None, chunk_size: int = 64,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form: the two-level scan of ``selective_scan_chunked`` with Longhorn's decays.

    The sequence is cut into nc = L / Lc chunks and every step below updates all chunks at once:

    1. each chunk (but the last) scans its Lc tokens from a zero state: its end state ``local``, and
       multiplies up its decays P_c = prod_{t in c} (1 - Δ_t ⊗ k_t^2), (Dn, N) per chunk;
    2. the start states follow chunk by chunk, S_{c+1} = P_c ⊙ S_c + local_c (nc - 1 small steps);
    3. each chunk scans its tokens again from its true start state and reads out y.

    The decay per (channel, state) is not a scalar per step times a constant, so a quadratic
    intra-chunk form would need an (Lc x Lc) matrix per channel and state; as for the selective
    scan that loses to this form on CPU. Products, not sums of log-decays: every factor is in (0, 1]
    (a product may underflow to 0, which is its value), so nothing is divided and nothing overflows.
    Padding of a partial last chunk uses Δ = 0 (factor 1, no input). With L <= Lc it is one scan.
    Same arguments and returns as :func:`longhorn_recurrent`, plus ``chunk_size``.
    """
    _check_shapes(x, beta, k, q)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    Bsz, L, Dn = x.shape
    N = k.shape[2]
    ct = compute_dtype(x)
    S0 = init_longhorn_state(x, k) if state is None else state.to(ct)
    x_, b_, k_, q_ = (t.to(ct) for t in (x, beta, k, q))
    if L == 0:
        return x[:, :0], S0
    skip = 0.0 if D is None else D.to(ct) * x_
    delta = _step_sizes(b_, k_)  # (B, L, Dn)
    u = delta * x_  # (B, L, Dn): what each token writes, times k
    Lc = min(chunk_size, L)
    pad = (-L) % Lc
    if pad:  # Δ = u = 0 on padding: factor 1 and no input, so the last chunk ends in the state of token L - 1
        delta, u, k_, q_ = (F.pad(t, (0, 0, 0, pad)) for t in (delta, u, k_, q_))
    nc = delta.shape[1] // Lc
    ds, us = delta.view(Bsz, nc, Lc, Dn).unbind(2), u.view(Bsz, nc, Lc, Dn).unbind(2)  # Lc x (B, nc, Dn)
    ks, qs = k_.view(Bsz, nc, Lc, N).unbind(2), q_.view(Bsz, nc, Lc, N).unbind(2)  # Lc x (B, nc, N)

    def forget(i: int, c: int) -> Tensor:
        """Token i of the first c chunks: 1 - Δ_i ⊗ k_i^2, (B, c, Dn, N)."""
        return 1 - ds[i][:, :c, :, None] * ks[i][:, :c, None, :].square()

    def write(i: int, c: int) -> Tensor:
        return us[i][:, :c, :, None] * ks[i][:, :c, None, :]  # (Δ_i ⊙ x_i) ⊗ k_i, (B, c, Dn, N)

    local = x_.new_zeros(Bsz, nc - 1, Dn, N)  # 1. end states from zero, and the decay products
    decay = x_.new_ones(Bsz, nc - 1, Dn, N)
    for i in range(Lc if nc > 1 else 0):
        a = forget(i, nc - 1)
        local, decay = torch.addcmul(write(i, nc - 1), a, local), decay * a
    starts = [S0]  # 2. true start states
    for c in range(nc - 1):
        starts.append(torch.addcmul(local[:, c], decay[:, c], starts[-1]))
    S = torch.stack(starts, dim=1)  # 3. (B, nc, Dn, N), rescanned from the true starts
    outputs = []
    for i in range(Lc):
        S = torch.addcmul(write(i, nc), forget(i, nc), S)
        outputs.append((S @ qs[i][..., None]).squeeze(-1))  # (B, nc, Dn): S_i q_i
    y = torch.stack(outputs, dim=2).reshape(Bsz, nc * Lc, Dn)[:, :L] + skip
    return y.to(x.dtype), S[:, -1]
