"""The gated delta product: per token, a scalar decay then n_h delta-rule steps, y_t = S_t^T q_t.

DeltaProduct (Siems, Carstensen, Zela, Hutter, Pontil, Grazzi 2025, "DeltaProduct: Improving
State-Tracking in Linear RNNs via Householder Products", arXiv 2502.10297) takes n_h online
gradient steps per token instead of DeltaNet's one, each with its own key, value and strength:

    S <- exp(g_t) S,  then for j = 1..n_h:  S <- S + beta_{t,j} k_{t,j} (v_{t,j} - S^T k_{t,j})^T,

so the token's state transition is exp(g_t) prod_j (I - beta_{t,j} k_{t,j} k_{t,j}^T), a product of n_h
generalised Householder matrices (diagonal plus rank n_h), and the output reads the state after all
n_h steps. n_h = 1 is the gated delta rule (``recallkit.ops.delta_rule``); g = None drops the decay
(plain DeltaProduct).

q: (B, H, T, Dk); k: (B, H, T, n_h, Dk) (L2-normalised); v: (B, H, T, n_h, Dv); beta: (B, H, T, n_h),
in [0, 1], or in [0, 2] for the paper's negative eigenvalues; g: (B, H, T) or None; the state
S: (B, H, Dk, Dv), kept in float32 (float64 for float64 inputs). Two forms:

- :func:`delta_product_recurrent`: the token loop, the spec;
- :func:`delta_product_chunked`: the exact chunked form. The n_h micro-steps of every token are laid
  out as a sequence of T * n_h delta-rule steps (token t's step j at position t * n_h + j), the decay
  on each token's first micro-step (log-decay 0 on the others), the query on its last (zero queries
  elsewhere, whose outputs are dropped), and the chunked gated delta-rule kernel runs on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.ops.delta_rule import delta_rule_chunked, init_delta_state
from recallkit.ops.numerics import compute_dtype


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None) -> None:
    if k.dim() != 5 or k.shape[:3] != q.shape[:3] or k.shape[-1] != q.shape[-1] or v.shape[:4] != k.shape[:4]:
        raise ValueError(f"q must be (B, H, T, Dk), k (B, H, T, n_h, Dk) and v (B, H, T, n_h, Dv); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if beta.shape != k.shape[:4]:
        raise ValueError(f"beta must be (B, H, T, n_h) = {tuple(k.shape[:4])}; got {tuple(beta.shape)}")
    if g is not None and g.shape != q.shape[:3]:
        raise ValueError(f"g must be (B, H, T) = {tuple(q.shape[:3])} (one log-decay per token); "
                         f"got {tuple(g.shape)}")


def delta_product_recurrent(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        q: queries, (B, H, T, Dk).
        k: (L2-normalised) keys of the n_h steps, (B, H, T, n_h, Dk).
        v: values of the n_h steps, (B, H, T, n_h, Dv).
        beta: writing strengths of the n_h steps, (B, H, T, n_h), in [0, 1] (or [0, 2]).
        g: log-decays per head and token, (B, H, T), <= 0; None for no decay.
        state: S from a previous call, (B, H, Dk, Dv), or None for zeros.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state S after the last token (B, H, Dk, Dv), float32+.
    """
    _check_shapes(q, k, v, beta, g)
    ct = compute_dtype(q)
    S = init_delta_state(q, v[:, :, :, 0]) if state is None else state.to(ct)
    q_, k_, v_, b_ = (t.to(ct) for t in (q, k, v, beta))
    outputs = []
    for t in range(q.shape[2]):
        if g is not None:
            S = g[:, :, t, None, None].to(ct).exp() * S  # the token's decay, once, before its steps
        for j in range(k.shape[3]):
            k_j, b_j = k_[:, :, t, j], b_[:, :, t, j, None, None]  # (B, H, Dk), (B, H, 1, 1)
            read = torch.einsum("bhk,bhkv->bhv", k_j, S)  # S^T k: what the key currently retrieves
            # (I - b k k^T) S + b k v^T, one generalised Householder step
            S = S + b_j * k_j[..., :, None] * (v_[:, :, t, j] - read)[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q_[:, :, t], S))  # read after all n_h steps
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0, 0]
    return y.to(v.dtype), S


def delta_product_chunked(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor | None = None, *, state: Tensor | None = None,
    chunk_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """Exact chunked form: the T * n_h micro-steps as one gated delta-rule sequence.

    Micro-step (t, j) sits at position t * n_h + j with key k_{t,j}, value v_{t,j}, strength beta_{t,j},
    log-decay g_t for j = 0 and 0 otherwise (exp(0) = 1: no decay), and query q_t for j = n_h - 1 and
    0 otherwise; the delta rule's state after position t * n_h + n_h - 1 is then S_t exactly, and its
    output there is S_t^T q_t. ``chunk_size`` counts micro-steps (chunk_size / n_h tokens per chunk),
    as the interleaved sequence is what :func:`recallkit.ops.delta_rule.delta_rule_chunked` chunks.
    Same arguments and returns as :func:`delta_product_recurrent`, plus ``chunk_size``.
    """
    _check_shapes(q, k, v, beta, g)
    B, H, T, n, Dk = k.shape
    q_steps = q.new_zeros(B, H, T, n, Dk)
    q_steps[:, :, :, -1] = q  # (B, H, T, n_h, Dk): the query only at each token's last micro-step
    g_steps = None
    if g is not None:
        g_steps = g.new_zeros(B, H, T, n)
        g_steps[:, :, :, 0] = g  # (B, H, T, n_h): the decay only at each token's first micro-step
        g_steps = g_steps.reshape(B, H, T * n)
    y, S = delta_rule_chunked(
        q_steps.reshape(B, H, T * n, Dk), k.reshape(B, H, T * n, Dk), v.reshape(B, H, T * n, v.shape[-1]),
        beta.reshape(B, H, T * n), g_steps, state=state, chunk_size=chunk_size,
    )
    # (B, H, T, Dv): the outputs at each token's last micro-step
    return y.view(B, H, T, n, v.shape[-1])[:, :, :, -1], S
