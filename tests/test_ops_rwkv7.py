"""Chunked (UT transform, per-channel decays) DPLR delta rule of RWKV-7 == token recurrence, forward and
backward from a nonzero state, and == KDA's recurrence for alpha = -b k, beta = exp(g) ⊙ k."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop
from recallkit.ops import gated_linear_attention as gla_module

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk


def inputs(B=2, H=2, T=23, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    """q, k, v, alpha, beta, g as RWKV-7 builds them: alpha = -(a ⊙ kappa), beta = kappa with kappa a
    unit removal key and a in (0, 1)^Dk, k the replacement key, g <= 0."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    k = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype) / Dk**0.5
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    kappa = F.normalize(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype), dim=-1)
    a = torch.sigmoid(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype))
    g = -F.softplus(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)) * strength
    return q, k, v, -a * kappa, kappa, g


def start_state(B=2, H=2, Dk=5, Dv=3, seed=9, dtype=torch.float64):
    return torch.randn(B, H, Dk, Dv, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_rwkv7_chunked_equals_recurrent(chunk_size, from_state):
    args = inputs()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.rwkv7_recurrent(*args, state=state)
    y_chunk, s_chunk = ops.rwkv7_chunked(*args, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert s_rec.shape == (2, 2, 5, 3)


@pytest.mark.parametrize("sub_chunk_size", [1, 2, 3, 16])
def test_rwkv7_sub_chunks_change_nothing(sub_chunk_size, vector_gate_path):
    args = inputs()
    y_rec, s_rec = ops.rwkv7_recurrent(*args, state=start_state())
    y, s = ops.rwkv7_chunked(*args, state=start_state(), chunk_size=16, sub_chunk_size=sub_chunk_size)
    torch.testing.assert_close(y, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s, s_rec, atol=1e-12, rtol=1e-12)


def test_rwkv7_recurrence_is_the_paper_update():
    # the paper's orientation: P_t = P_{t-1} (Diag(w_t) - kappa^T (a ⊙ kappa)) + v_t^T k_t, o_t = P_t r_t,
    # with P = S^T (d_v x d_k) and vectors as rows
    q, k, v, alpha, beta, g = inputs(B=1, H=1, T=6)
    P = torch.randn(3, 5, dtype=torch.float64)
    y, s = ops.rwkv7_recurrent(q, k, v, alpha, beta, g, state=P.T[None, None])
    for t in range(6):
        kappa, a_kappa = beta[0, 0, t], -alpha[0, 0, t]
        transition = torch.diag(g[0, 0, t].exp()) - torch.outer(kappa, a_kappa)
        P = P @ transition + torch.outer(v[0, 0, t], k[0, 0, t])
        torch.testing.assert_close(y[0, 0, t], P @ q[0, 0, t])
    torch.testing.assert_close(s[0, 0], P.T)


@pytest.mark.parametrize("chunk_size", [4, 7, 23])
def test_rwkv7_with_kda_low_rank_part_is_kda(chunk_size):
    # (I - b k k^T) Diag(exp g) S + b k v^T = (Diag(exp g) + (-b k)(exp(g) ⊙ k)^T) S + (b k) v^T
    q, k, v, _, kappa, g = inputs()
    b = torch.sigmoid(torch.randn(2, 2, 23, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    y_ref, s_ref = ops.kda_recurrent(q, kappa, v, b, g, state=start_state())
    bk = b[..., None] * kappa
    args = (q, bk, v, -bk, g.exp() * kappa, g)
    for y, s in (ops.rwkv7_recurrent(*args, state=start_state()),
                 ops.rwkv7_chunked(*args, state=start_state(), chunk_size=chunk_size)):
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-12)


def test_rwkv7_zero_low_rank_part_is_gated_linear_attention():
    q, k, v, alpha, beta, g = inputs()
    y, s = ops.rwkv7_chunked(q, k, v, torch.zeros_like(alpha), beta, g, state=start_state(), chunk_size=8)
    y_ref, s_ref = ops.gated_linear_attention_recurrent(q, k, v, g, state=start_state())
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


def test_rwkv7_chunked_resumes_from_a_state():
    args = inputs()
    y_full, s_full = ops.rwkv7_recurrent(*args)
    _, s_head = ops.rwkv7_chunked(*(t[:, :, :9] for t in args), chunk_size=4)
    y_tail, s_tail = ops.rwkv7_chunked(*(t[:, :, 9:] for t in args), chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)


def test_rwkv7_gradients_agree(vector_gate_path):  # 5 does not divide T = 13; 13 and 32 are one chunk
    assert_chunked_gradients_match_loop(
        ops.rwkv7_recurrent, ops.rwkv7_chunked, lambda: inputs(T=13, seed=3), start_state, (4, 5, 13, 32))


def test_rwkv7_gradcheck_chunked(vector_gate_path):
    args = [t.clone().requires_grad_() for t in inputs(B=1, H=1, T=6, Dk=3, Dv=2, seed=5)]
    state = start_state(B=1, H=1, Dk=3, Dv=2).requires_grad_()

    def f(q, k, v, alpha, beta, g, state):
        return ops.rwkv7_chunked(q, k, v, alpha, beta, g, state=state, chunk_size=4, sub_chunk_size=2)

    assert torch.autograd.gradcheck(f, (*args, state))


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_rwkv7_strong_decays_stay_finite_in_float32(chunk_size):
    args = [t.float().requires_grad_() for t in inputs(T=100, strength=20.0)]
    y_rec, _ = ops.rwkv7_recurrent(*args)
    y_chunk, s_chunk = ops.rwkv7_chunked(*args, chunk_size=chunk_size)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(s_chunk).all()
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-4)
    y_chunk.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in args)


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_rwkv7_float32_long_sequence_matches_float64(chunk_size):
    args = inputs(B=1, H=2, T=600, Dk=16, Dv=8, strength=0.05)  # > 512: runs in segments
    y64, s64 = ops.rwkv7_recurrent(*args, state=start_state(B=1, Dk=16, Dv=8))
    y32, s32 = ops.rwkv7_chunked(*(t.float() for t in args), state=start_state(B=1, Dk=16, Dv=8).float(),
                                 chunk_size=chunk_size)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32, s64.float(), atol=1e-4, rtol=1e-4)


def test_rwkv7_empty_sequence_and_bad_shapes():
    args = inputs(T=0)
    y, s = ops.rwkv7_chunked(*args)
    assert y.shape == (2, 2, 0, 3) and s.shape == (2, 2, 5, 3) and not s.any()
    q, k, v, alpha, beta, g = inputs(T=4)
    with pytest.raises(ValueError, match=r"^g must be \(B, H, T, Dk\)"):
        ops.rwkv7_chunked(q, k, v, alpha, beta, g[..., 0])
    with pytest.raises(ValueError, match=r"^alpha must be"):
        ops.rwkv7_recurrent(q, k, v, alpha[..., :2], beta, g)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ops.rwkv7_chunked(q, k, v, alpha, beta, g, chunk_size=0)


@pytest.mark.parametrize("limit", [None, -1.0])
def test_rwkv7_sub_chunk_gemm_and_exact_form_both_equal_the_loop(monkeypatch, limit, vector_gate_path):
    # the default inputs' sub-chunk decays stay below the limit, so the pairs inside a sub-chunk take the
    # GEMM; a limit below zero forces the exact masked (sub, sub, Dk) form on the same inputs (both with
    # the strictly causal scores of the shifted decays)
    if limit is not None:
        monkeypatch.setattr(gla_module, "_DIAG_GEMM_MAX_DECAY", limit)
    grads = []
    for kernel in (ops.rwkv7_recurrent, lambda *a, state: ops.rwkv7_chunked(*a, state=state, chunk_size=16)):
        args = [t.requires_grad_() for t in inputs(seed=4)]
        state = start_state().requires_grad_()
        y, s = kernel(*args, state=state)
        ((y * y.detach().cos()).sum() + s.square().sum()).backward()
        grads.append([y, s, *(t.grad for t in (*args, state))])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)
