"""Chunked Longhorn scan == token recurrence (outputs, final state and gradients, from a nonzero state),
the recurrence == the paper's closed-form update, float32 accuracy and shape errors."""

from __future__ import annotations

import pytest
import torch

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk


def xbkq(B=2, T=23, Dn=5, N=4, seed=0, dtype=torch.float64, key_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, Dn, generator=gen, dtype=dtype)
    beta = torch.sigmoid(torch.randn(B, T, Dn, generator=gen, dtype=dtype))
    k = key_scale * torch.randn(B, T, N, generator=gen, dtype=dtype)
    q = torch.randn(B, T, N, generator=gen, dtype=dtype)
    D = torch.randn(Dn, generator=gen, dtype=dtype)
    return x, beta, k, q, D


def start_state(B=2, Dn=5, N=4, seed=9, dtype=torch.float64):
    return torch.randn(B, Dn, N, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_longhorn_chunked_equals_recurrent(chunk_size, from_state):
    x, beta, k, q, D = xbkq()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.longhorn_recurrent(x, beta, k, q, D, state=state)
    y_chunk, s_chunk = ops.longhorn_chunked(x, beta, k, q, D, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert s_rec.shape == (2, 5, 4)


def test_longhorn_recurrence_is_the_paper_update():
    # per channel d: the implicit step s = argmin ||s - s_prev||^2 + beta_d (s^T k - x_d)^2, with
    # k k^T kept on its diagonal: s_t = (1 - Δ_d k^2) ⊙ s_{t-1} + Δ_d x_d k, Δ_d = beta_d / (1 + beta_d k^T k)
    x, beta, k, q, D = xbkq(B=1, T=6)
    S = start_state(B=1)[0]
    y, s = ops.longhorn_recurrent(x, beta, k, q, D, state=S[None])
    for t in range(6):
        k_t = k[0, t]
        for d in range(5):
            b = beta[0, t, d]
            delta = b / (1 + b * k_t @ k_t)
            S[d] = (1 - delta * k_t**2) * S[d] + delta * x[0, t, d] * k_t
        torch.testing.assert_close(y[0, t], S @ q[0, t] + D * x[0, t])
    torch.testing.assert_close(s[0], S)


def test_longhorn_exact_implicit_step_on_a_one_hot_key():
    # a one-hot key makes k k^T diagonal, so the step is the exact proximal step: with beta -> large it
    # overwrites the addressed state with x (s^T k = x after the step); other states are untouched
    x, beta, k, q, _ = xbkq(B=1, T=1, N=3)
    k = torch.tensor([[[0.0, 1.0, 0.0]]], dtype=torch.float64)
    S0 = start_state(B=1, N=3)
    _, s = ops.longhorn_recurrent(x, torch.full_like(beta, 1e12), k, q, state=S0)
    torch.testing.assert_close(s[0, :, 1], x[0, 0], atol=1e-10, rtol=0)
    torch.testing.assert_close(s[0, :, [0, 2]], S0[0, :, [0, 2]])


def test_longhorn_zero_beta_keeps_the_state():
    x, beta, k, q, _ = xbkq(T=9)
    S0 = start_state()
    y, s = ops.longhorn_chunked(x, torch.zeros_like(beta), k, q, state=S0, chunk_size=4)
    torch.testing.assert_close(s, S0)
    torch.testing.assert_close(y, torch.einsum("bdn,btn->btd", S0, q))


def test_longhorn_chunked_resumes_from_a_state():
    x, beta, k, q, D = xbkq()
    y_full, s_full = ops.longhorn_recurrent(x, beta, k, q, D)
    _, s_head = ops.longhorn_chunked(*(t[:, :9] for t in (x, beta, k, q)), D, chunk_size=4)
    y_tail, s_tail = ops.longhorn_chunked(*(t[:, 9:] for t in (x, beta, k, q)), D, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, 9:])
    torch.testing.assert_close(s_tail, s_full)


def test_longhorn_gradients_agree():  # 5 does not divide T = 13; 13 and 32 are one chunk
    assert_chunked_gradients_match_loop(
        ops.longhorn_recurrent, ops.longhorn_chunked, lambda: xbkq(T=13, seed=3), start_state,
        (1, 4, 5, 13, 32))


def test_longhorn_gradcheck_chunked():
    inputs = [t.requires_grad_() for t in xbkq(B=1, T=6, Dn=3, N=2, seed=5)]
    state = start_state(B=1, Dn=3, N=2).requires_grad_()

    def f(x, beta, k, q, D, state):
        return ops.longhorn_chunked(x, beta, k, q, D, state=state, chunk_size=4)

    assert torch.autograd.gradcheck(f, (*inputs, state))


def test_longhorn_float32_long_sequence_matches_float64():
    x, beta, k, q, D = xbkq(B=1, T=600, Dn=16, N=8, key_scale=0.5)
    y64, s64 = ops.longhorn_recurrent(x, beta, k, q, D)
    y32, s32 = ops.longhorn_chunked(*(t.float() for t in (x, beta, k, q, D)), chunk_size=64)
    assert s32.dtype == torch.float32 and y32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32, s64.float(), atol=1e-4, rtol=1e-4)


def test_longhorn_large_keys_stay_finite_and_bounded_in_float32():
    # every factor 1 - Δ k^2 lies in (0, 1]: the state stays bounded however large the keys
    x, beta, k, q, D = (t.float().requires_grad_() for t in xbkq(T=100, key_scale=30.0))
    y, s = ops.longhorn_chunked(x, beta, k, q, D, chunk_size=16)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (x, beta, k, q, D))


def test_longhorn_empty_sequence_and_bad_shapes():
    x, beta, k, q, D = xbkq(T=0)
    y, s = ops.longhorn_chunked(x, beta, k, q, D)
    assert y.shape == (2, 0, 5) and s.shape == (2, 5, 4) and not s.any()
    x, beta, k, q, D = xbkq(T=4)
    with pytest.raises(ValueError, match="x and beta"):
        ops.longhorn_chunked(x, beta[..., :1], k, q)
    with pytest.raises(ValueError, match="k and q"):
        ops.longhorn_recurrent(x, beta, k, q[:, :3])
    with pytest.raises(ValueError, match="chunk_size"):
        ops.longhorn_chunked(x, beta, k, q, chunk_size=0)
