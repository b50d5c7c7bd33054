"""Chunked (WY / UT transform, per-channel decays) KDA delta rule == token recurrence, forward and
backward, and == the gated delta rule when the gate is constant over the channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk


def qkvbg(B=2, H=2, T=23, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype), dim=-1)  # unit keys
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    beta = torch.sigmoid(torch.randn(B, H, T, generator=gen, dtype=dtype))
    g = -F.softplus(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)) * strength  # one per channel
    return q, k, v, beta, g


def start_state(B=2, H=2, Dk=5, Dv=3, seed=9, dtype=torch.float64):
    return torch.randn(B, H, Dk, Dv, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_kda_chunked_equals_recurrent(chunk_size, from_state):
    q, k, v, beta, g = qkvbg()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.kda_recurrent(q, k, v, beta, g, state=state)
    y_chunk, s_chunk = ops.kda_chunked(q, k, v, beta, g, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert s_rec.shape == (2, 2, 5, 3)


@pytest.mark.parametrize("sub_chunk_size", [1, 2, 3, 16])
def test_kda_sub_chunks_change_nothing(sub_chunk_size, vector_gate_path):
    q, k, v, beta, g = qkvbg()
    y_rec, s_rec = ops.kda_recurrent(q, k, v, beta, g, state=start_state())
    y, s = ops.kda_chunked(q, k, v, beta, g, state=start_state(), chunk_size=16,
                           sub_chunk_size=sub_chunk_size)
    torch.testing.assert_close(y, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s, s_rec, atol=1e-12, rtol=1e-12)


def test_kda_recurrence_is_the_paper_update():
    # the spec, as the matrix update S_t = (I - b_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + b_t k_t v_t^T
    q, k, v, beta, g = qkvbg(B=1, H=1, T=6)
    S = torch.randn(5, 3, dtype=torch.float64)
    y, s = ops.kda_recurrent(q, k, v, beta, g, state=S[None, None])
    eye = torch.eye(5, dtype=torch.float64)
    for t in range(6):
        k_t, b_t = k[0, 0, t], beta[0, 0, t]
        decay = torch.diag(g[0, 0, t].exp())
        S = (eye - b_t * torch.outer(k_t, k_t)) @ decay @ S + b_t * torch.outer(k_t, v[0, 0, t])
        torch.testing.assert_close(y[0, 0, t], S.T @ q[0, 0, t])
    torch.testing.assert_close(s[0, 0], S)


@pytest.mark.parametrize("chunk_size", [4, 7])
def test_kda_with_a_channel_constant_gate_is_the_gated_delta_rule(chunk_size):
    q, k, v, beta, g = qkvbg()
    scalar = g[..., 0]  # (B, H, T): one log-decay per head
    vector = scalar[..., None].expand_as(g)
    y_ref, s_ref = ops.delta_rule_recurrent(q, k, v, beta, scalar, state=start_state())
    for y, s in (ops.kda_recurrent(q, k, v, beta, vector, state=start_state()),
                 ops.kda_chunked(q, k, v, beta, vector, state=start_state(), chunk_size=chunk_size)):
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-12)
    y_gdn, s_gdn = ops.delta_rule_chunked(q, k, v, beta, scalar, state=start_state(), chunk_size=chunk_size)
    torch.testing.assert_close(y_gdn, y_ref)
    torch.testing.assert_close(s_gdn, s_ref)


def test_kda_zero_gate_is_plain_deltanet():
    q, k, v, beta, g = qkvbg()
    y, s = ops.kda_chunked(q, k, v, beta, torch.zeros_like(g), chunk_size=8)
    y_ref, s_ref = ops.delta_rule_recurrent(q, k, v, beta)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


def test_kda_channels_forget_at_their_own_rate():
    # beta = 0 writes nothing: the state only decays, row d by exp(sum_t g_td)
    q, k, v, beta, g = qkvbg(T=9)
    S0 = start_state()
    _, s = ops.kda_chunked(q, k, v, torch.zeros_like(beta), g, state=S0, chunk_size=4)
    torch.testing.assert_close(s, g.sum(2).exp()[..., None] * S0)


def test_kda_chunked_resumes_from_a_state():
    q, k, v, beta, g = qkvbg()
    y_full, s_full = ops.kda_recurrent(q, k, v, beta, g)
    head = [t[:, :, :9] for t in (q, k, v, beta, g)]
    tail = [t[:, :, 9:] for t in (q, k, v, beta, g)]
    _, s_head = ops.kda_chunked(*head, chunk_size=4)
    y_tail, s_tail = ops.kda_chunked(*tail, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)


def test_kda_gradients_agree(vector_gate_path):  # 5 does not divide T = 13
    assert_chunked_gradients_match_loop(
        ops.kda_recurrent, ops.kda_chunked, lambda: qkvbg(T=13, seed=3), start_state, (4, 5, 13))


def test_kda_gradcheck_chunked(vector_gate_path):
    inputs = [t.requires_grad_() for t in qkvbg(B=1, H=1, T=6, Dk=3, Dv=2, seed=5)]
    state = start_state(B=1, H=1, Dk=3, Dv=2).requires_grad_()

    def f(q, k, v, beta, g, state):
        return ops.kda_chunked(q, k, v, beta, g, state=state, chunk_size=4, sub_chunk_size=2)

    assert torch.autograd.gradcheck(f, (*inputs, state))


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_kda_strong_decays_stay_finite_in_float32(chunk_size):
    q, k, v, beta, g = (t.requires_grad_() for t in qkvbg(T=100, dtype=torch.float32, strength=20.0))
    y_rec, _ = ops.kda_recurrent(q, k, v, beta, g)
    y_chunk, s_chunk = ops.kda_chunked(q, k, v, beta, g, chunk_size=chunk_size)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(s_chunk).all()
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-4)
    y_chunk.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, beta, g))


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_kda_float32_long_sequence_matches_float64(chunk_size):
    q, k, v, beta, g = qkvbg(B=1, H=2, T=600, Dk=16, Dv=8, strength=0.05)  # > 512: runs in segments
    y64, s64 = ops.kda_recurrent(q, k, v, beta, g)
    y32, s32 = ops.kda_chunked(*(t.float() for t in (q, k, v, beta, g)), chunk_size=chunk_size)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32, s64.float(), atol=1e-4, rtol=1e-4)


def test_kda_empty_sequence_and_bad_shapes():
    q, k, v, beta, g = qkvbg(T=0)
    y, s = ops.kda_chunked(q, k, v, beta, g)
    assert y.shape == (2, 2, 0, 3) and s.shape == (2, 2, 5, 3) and not s.any()
    q, k, v, beta, g = qkvbg(T=4)
    with pytest.raises(ValueError, match="one log-decay per key channel"):
        ops.kda_chunked(q, k, v, beta, g[..., 0])
    with pytest.raises(ValueError, match="beta"):
        ops.kda_recurrent(q, k, v, beta[..., None], g)
