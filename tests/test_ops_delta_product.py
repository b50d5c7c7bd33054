"""Chunked (interleaved micro-steps through the chunked gated delta rule) delta product == its token
loop, forward and backward; the loop is the paper's product of Householder matrices; n_h = 1 is the
gated delta rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop

# in micro-steps of the interleaved sequence T * n_h = 23 * 2 = 46: 3, 7, 16 do not divide it,
# 64 is one chunk, 1 is the token loop in disguise
CHUNK_SIZES = [1, 2, 3, 7, 8, 16, 46, 64]


def qkvbg(B=2, H=2, T=23, n=2, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0, max_beta=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, H, T, n, Dk, generator=gen, dtype=dtype), dim=-1)  # unit keys
    v = torch.randn(B, H, T, n, Dv, generator=gen, dtype=dtype)
    beta = max_beta * torch.sigmoid(torch.randn(B, H, T, n, generator=gen, dtype=dtype))
    g = -F.softplus(torch.randn(B, H, T, generator=gen, dtype=dtype)) * strength  # one per head and token
    return q, k, v, beta, g


def start_state(B=2, H=2, Dk=5, Dv=3, seed=9, dtype=torch.float64):
    return torch.randn(B, H, Dk, Dv, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
@pytest.mark.parametrize("gated", [True, False])
def test_delta_product_chunked_equals_recurrent(chunk_size, from_state, gated):
    q, k, v, beta, g = qkvbg()
    g = g if gated else None
    state = start_state() if from_state else None
    y_rec, s_rec = ops.delta_product_recurrent(q, k, v, beta, g, state=state)
    y_chunk, s_chunk = ops.delta_product_chunked(q, k, v, beta, g, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert y_rec.shape == (2, 2, 23, 3) and s_rec.shape == (2, 2, 5, 3)


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("chunk_size", [5, 12, 200])
def test_delta_product_chunked_at_other_step_counts(n, chunk_size):
    q, k, v, beta, g = qkvbg(T=13, n=n, max_beta=2.0)  # beta in [0, 2]: negative eigenvalues too
    y_rec, s_rec = ops.delta_product_recurrent(q, k, v, beta, g, state=start_state())
    y, s = ops.delta_product_chunked(q, k, v, beta, g, state=start_state(), chunk_size=chunk_size)
    torch.testing.assert_close(y, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s, s_rec, atol=1e-12, rtol=1e-12)


def test_delta_product_recurrence_is_the_paper_update():
    # the paper's form S_t = A_t S_{t-1} + B_t with the Householder product
    # A_t = exp(g_t) H_{t,n_h} ... H_{t,1}, H_tj = I - b_tj k_tj k_tj^T,
    # B_t = sum_j H_{t,n_h} ... H_{t,j+1} b_tj k_tj v_tj^T
    q, k, v, beta, g = qkvbg(B=1, H=1, T=6, n=3, max_beta=2.0)
    S = torch.randn(5, 3, dtype=torch.float64)
    y, s = ops.delta_product_recurrent(q, k, v, beta, g, state=S[None, None])
    eye = torch.eye(5, dtype=torch.float64)
    for t in range(6):
        A, Bt = g[0, 0, t].exp() * eye, torch.zeros(5, 3, dtype=torch.float64)
        for j in range(3):
            k_j, b_j = k[0, 0, t, j], beta[0, 0, t, j]
            house = eye - b_j * torch.outer(k_j, k_j)
            A, Bt = house @ A, house @ Bt + b_j * torch.outer(k_j, v[0, 0, t, j])
        S = A @ S + Bt
        torch.testing.assert_close(y[0, 0, t], S.T @ q[0, 0, t])
    torch.testing.assert_close(s[0, 0], S)


@pytest.mark.parametrize("chunk_size", [4, 7])
def test_one_householder_step_is_the_gated_delta_rule(chunk_size):
    q, k, v, beta, g = qkvbg(n=1)
    y_ref, s_ref = ops.delta_rule_recurrent(q, k[:, :, :, 0], v[:, :, :, 0], beta[..., 0], g,
                                            state=start_state())
    for y, s in (ops.delta_product_recurrent(q, k, v, beta, g, state=start_state()),
                 ops.delta_product_chunked(q, k, v, beta, g, state=start_state(), chunk_size=chunk_size)):
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-12)


def test_delta_product_is_the_delta_rule_on_the_micro_steps():
    # two tokens of n_h = 2 steps == four delta-rule tokens, the decay on the first of each pair
    q, k, v, beta, g = qkvbg(T=2, n=2)
    _, s = ops.delta_product_recurrent(q, k, v, beta, g, state=start_state())
    g_steps = torch.stack([g, torch.zeros_like(g)], dim=-1).flatten(2)
    _, s_ref = ops.delta_rule_recurrent(torch.zeros(2, 2, 4, 5, dtype=q.dtype), k.flatten(2, 3),
                                        v.flatten(2, 3), beta.flatten(2), g_steps, state=start_state())
    torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-12)


def test_delta_product_chunked_resumes_from_a_state():
    q, k, v, beta, g = qkvbg()
    y_full, s_full = ops.delta_product_recurrent(q, k, v, beta, g)
    head = [t[:, :, :9] for t in (q, k, v, beta, g)]
    tail = [t[:, :, 9:] for t in (q, k, v, beta, g)]
    _, s_head = ops.delta_product_chunked(*head, chunk_size=4)
    y_tail, s_tail = ops.delta_product_chunked(*tail, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)


def test_delta_product_gradients_agree():  # 5 does not divide T * n_h = 26; 26 and 64 are one chunk
    assert_chunked_gradients_match_loop(
        ops.delta_product_recurrent, ops.delta_product_chunked, lambda: qkvbg(T=13, seed=3, max_beta=2.0),
        start_state, (4, 5, 26, 64))


def test_delta_product_gradcheck_chunked():
    inputs = [t.requires_grad_() for t in qkvbg(B=1, H=1, T=5, n=2, Dk=3, Dv=2, seed=5)]
    state = start_state(B=1, H=1, Dk=3, Dv=2).requires_grad_()

    def f(q, k, v, beta, g, state):
        return ops.delta_product_chunked(q, k, v, beta, g, state=state, chunk_size=3)

    assert torch.autograd.gradcheck(f, (*inputs, state))


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_delta_product_float32_long_sequence_matches_float64(chunk_size):
    # T * n_h = 600 > 512 micro-steps: the delta-rule kernel runs in segments
    q, k, v, beta, g = qkvbg(B=1, H=2, T=300, n=2, Dk=16, Dv=8, strength=0.05)
    y64, s64 = ops.delta_product_recurrent(q, k, v, beta, g)
    y32, s32 = ops.delta_product_chunked(*(t.float() for t in (q, k, v, beta, g)), chunk_size=chunk_size)
    assert s32.dtype == torch.float32 and y32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32, s64.float(), atol=1e-4, rtol=1e-4)


def test_delta_product_empty_sequence_and_bad_shapes():
    q, k, v, beta, g = qkvbg(T=0)
    for kernel in (ops.delta_product_recurrent, ops.delta_product_chunked):
        y, s = kernel(q, k, v, beta, g)
        assert y.shape == (2, 2, 0, 3) and s.shape == (2, 2, 5, 3) and not s.any()
    q, k, v, beta, g = qkvbg(T=4)
    with pytest.raises(ValueError, match=r"k \(B, H, T, n_h, Dk\)"):
        ops.delta_product_chunked(q, k[:, :, :, 0], v, beta, g)
    with pytest.raises(ValueError, match="beta must be"):
        ops.delta_product_recurrent(q, k, v, beta[..., 0], g)
    with pytest.raises(ValueError, match="one log-decay per token"):
        ops.delta_product_chunked(q, k, v, beta, beta)
