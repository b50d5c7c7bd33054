"""Mamba-3's SISO recurrence: the exponential-trapezoidal SSM (Lahoti, Li, Chen, Wang, Bick, Kolter, Dao,
Gu 2026, "Mamba-3: Improved Sequence Modeling using State Space Principles", arXiv 2603.15569).

Per head, with alpha_t = exp(g_t) (g_t = dt_t A_t <= 0), beta_t = (1 - lam_t) dt_t alpha_t and
gamma_t = lam_t dt_t:

    h_t = alpha_t h_{t-1} + beta_t k_{t-1} v_{t-1}^T + gamma_t k_t v_t^T,    y_t = h_t^T q_t,

keys k = B, queries q = C (already rotated by the mixer: the RoPE form of the complex state, see
:func:`rotate_pairs`), values v = x; lam_t in [0, 1] blends the two ends of the step (lam = 1 is
Mamba-2's exponential-Euler rule). The state is (h (B, H, Dk, Dv), the last key (B, H, Dk), the
last value (B, H, Dv)): the previous token's B_{t-1} and x_{t-1}, not their outer product (Dk + Dv
numbers per head instead of Dk * Dv). h and both tails are kept in float32 (float64 for float64
inputs). Two forms:

- :func:`mamba3_recurrent`: the token loop, the spec;
- :func:`mamba3_chunked`: the same through the scalar-gated chunked linear attention of
  ``recallkit.ops.gated_linear_attention`` (derivation in its docstring).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.ops.gated_linear_attention import gated_linear_attention_chunked
from recallkit.ops.numerics import compute_dtype

Mamba3State = tuple[Tensor, Tensor, Tensor]  # h (B, H, Dk, Dv), k_prev (B, H, Dk), v_prev (B, H, Dv)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, g: Tensor, dt: Tensor, lam: Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, T, Dk) and v (B, H, T, Dv); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    for name, t in (("g", g), ("dt", dt), ("lam", lam)):
        if t.shape != q.shape[:3]:
            raise ValueError(f"{name} must be (B, H, T) = {tuple(q.shape[:3])}; got {tuple(t.shape)}")


def init_mamba3_state(q: Tensor, v: Tensor) -> Mamba3State:
    """Zero state for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv): no history, no last
    token (so the first step has no trapezoid term)."""
    B, H, _, Dk = q.shape
    Dv, ct = v.shape[-1], compute_dtype(q)
    h, k_prev, v_prev = (torch.zeros(B, H, *shape, device=q.device, dtype=ct)
                         for shape in ((Dk, Dv), (Dk,), (Dv,)))
    return h, k_prev, v_prev


def rotate_pairs(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate the channel pairs (x_{2i}, x_{2i+1}), i < S, of x (..., Dk) by angles (..., S); channels
    from 2S on pass unchanged (Mamba-3 rotates a fraction of the state). The rotation is
    [[cos, -sin], [sin, cos]]: the real form of multiplying x_{2i} + i x_{2i+1} by exp(i angle)."""
    S = angles.shape[-1]
    if 2 * S > x.shape[-1]:
        raise ValueError(f"{S} angles rotate {2 * S} channels but x has {x.shape[-1]}")
    pairs = x[..., : 2 * S].unflatten(-1, (S, 2))  # (..., S, 2)
    cos, sin = angles.cos(), angles.sin()
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
    return torch.cat([rotated, x[..., 2 * S :]], dim=-1)


def mamba3_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, dt: Tensor, lam: Tensor, *, state: Mamba3State | None = None
) -> tuple[Tensor, Mamba3State]:
    """Token-by-token exponential-trapezoidal recurrence (the reference).

    Args:
        q, k: queries C and keys B, (B, H, T, Dk), rotated already.
        v: values x, (B, H, T, Dv).
        g: log-decays dt_t A_t, (B, H, T), <= 0.
        dt: step sizes dt_t, (B, H, T), > 0.
        lam: trapezoid weights lam_t, (B, H, T), in [0, 1].
        state: (h, k_prev, v_prev) from a previous call, or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state (h, k_T, v_T) after the last token, float32+.
    """
    _check_shapes(q, k, v, g, dt, lam)
    ct = compute_dtype(q)
    h, k_prev, v_prev = init_mamba3_state(q, v) if state is None else (s.to(ct) for s in state)
    q_, k_, v_, g_, dt_, lam_ = (t.to(ct) for t in (q, k, v, g, dt, lam))
    outputs = []
    for t in range(q.shape[2]):
        alpha = g_[:, :, t].exp()  # (B, H)
        beta = ((1 - lam_[:, :, t]) * dt_[:, :, t] * alpha)[..., None, None]  # (B, H, 1, 1)
        gamma = (lam_[:, :, t] * dt_[:, :, t])[..., None, None]
        k_t, v_t = k_[:, :, t], v_[:, :, t]
        h = (alpha[..., None, None] * h + beta * k_prev[..., :, None] * v_prev[..., None, :]
             + gamma * k_t[..., :, None] * v_t[..., None, :])  # (B, H, Dk, Dv)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_[:, :, t], h))
        k_prev, v_prev = k_t, v_t
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    return y.to(v.dtype), (h, k_prev, v_prev)


def mamba3_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, dt: Tensor, lam: Tensor, *, state: Mamba3State | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Mamba3State]:
    """The recurrence as one scalar-gated linear attention, exactly.

    Write beta_t = delta_t alpha_t with delta_t = (1 - lam_t) dt_t. Then
    h_t = alpha_t (h_{t-1} + delta_t k_{t-1} v_{t-1}^T) + gamma_t k_t v_t^T, so the look-ahead state
    S'_t = h_t + delta_{t+1} k_t v_t^T obeys S'_t = alpha_t S'_{t-1} + c_t k_t v_t^T with the key weight
    c_t = gamma_t + delta_{t+1}: token t's key enters once, carrying its own gamma and the next token's
    trapezoid weight (the paper's two-band mask, folded into the keys). With delta_{T+1} = 0,
    S'_T = h_T; S'_0 = h_0 + delta_1 k_0 v_0^T starts it from the carried last key and value. The
    outputs follow as y_t = S'_t^T q_t - delta_{t+1} (q_t . k_t) v_t (the diagonal term counted early).
    No extra state or width: only the keys are rescaled, and the chunked kernel runs unchanged. The
    early-counted term and its removal cancel exactly in exact arithmetic; in floating point y_t keeps
    a rounding residue of order eps * delta_{t+1} |q_t . k_t| |v_t| from the next token (measured: 5e-7
    at dt = 10, 5e-3 at dt = 1e4 in float32), so this form is causal up to rounding, not bit for bit.
    Same arguments and returns as :func:`mamba3_recurrent`, plus ``chunk_size``.
    """
    _check_shapes(q, k, v, g, dt, lam)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    h0, k0, v0 = init_mamba3_state(q, v) if state is None else (s.to(ct) for s in state)
    if q.shape[2] == 0:
        return v[:, :, :0], (h0, k0, v0)
    q_, k_, v_, g_, dt_, lam_ = (t.to(ct) for t in (q, k, v, g, dt, lam))
    delta = (1 - lam_) * dt_  # (B, H, T)
    delta_next = torch.cat([delta[:, :, 1:], torch.zeros_like(delta[:, :, :1])], dim=2)  # delta_{t+1}
    weight = lam_ * dt_ + delta_next  # c_t (B, H, T)
    start = h0 + delta[:, :, 0, None, None] * k0[..., :, None] * v0[..., None, :]  # S'_0 (B, H, Dk, Dv)
    y, h = gated_linear_attention_chunked(q_, k_ * weight[..., None], v_, g_, state=start,
                                          chunk_size=chunk_size)
    y = y - (delta_next * (q_ * k_).sum(-1))[..., None] * v_  # (B, H, T, Dv)
    return y.to(v.dtype), (h, k_[:, :, -1], v_[:, :, -1])
