"""Chunked gated slot attention (two GLA passes joined by a softmax over the slots) == token recurrence,
forward and backward, from zero and nonzero slots."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop
from recallkit.ops import gated_linear_attention as gla_module

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk
F64 = torch.float64


def qkvg(B=2, H=2, T=23, Dk=5, Dv=3, M=4, seed=0, dtype=F64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    k = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    g = -F.softplus(torch.randn(B, H, T, M, generator=gen, dtype=dtype)) * strength  # one per slot
    return q, k, v, g


def start_state(B=2, H=2, Dk=5, Dv=3, M=4, seed=9, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, M, Dk, dtype=dtype, generator=gen),
            torch.randn(B, H, M, Dv, dtype=dtype, generator=gen))


def assert_states_close(a, b, **tol):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **tol)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_gsa_chunked_equals_recurrent(chunk_size, from_state):
    q, k, v, g = qkvg()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.gsa_recurrent(q, k, v, g, state=state)
    y_chunk, s_chunk = ops.gsa_chunked(q, k, v, g, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    assert_states_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert s_rec[0].shape == (2, 2, 4, 5) and s_rec[1].shape == (2, 2, 4, 3)


@pytest.mark.parametrize("sub_chunk_size", [1, 2, 3, 16])
def test_gsa_sub_chunks_change_nothing(sub_chunk_size, vector_gate_path):
    q, k, v, g = qkvg()
    y_rec, s_rec = ops.gsa_recurrent(q, k, v, g, state=start_state())
    y, s = ops.gsa_chunked(q, k, v, g, state=start_state(), chunk_size=16, sub_chunk_size=sub_chunk_size)
    torch.testing.assert_close(y, y_rec, atol=1e-12, rtol=1e-12)
    assert_states_close(s, s_rec, atol=1e-12, rtol=1e-12)


def test_gsa_recurrence_is_the_paper_update():
    # K_t = Diag(a_t) K_{t-1} + (1 - a_t) k_t^T, V_t likewise with v_t, o_t = V_t^T softmax(K_t q_t)
    q, k, v, g = qkvg(B=1, H=1, T=6)
    K, V = (s[0, 0] for s in start_state(B=1, H=1))
    y, (Ks, Vs) = ops.gsa_recurrent(q, k, v, g, state=(K[None, None], V[None, None]))
    for t in range(6):
        a = g[0, 0, t].exp()
        K = torch.diag(a) @ K + torch.outer(1 - a, k[0, 0, t])
        V = torch.diag(a) @ V + torch.outer(1 - a, v[0, 0, t])
        torch.testing.assert_close(y[0, 0, t], V.T @ torch.softmax(K @ q[0, 0, t], dim=0))
    torch.testing.assert_close(Ks[0, 0], K)
    torch.testing.assert_close(Vs[0, 0], V)


def test_gsa_slot_scores_are_the_pre_softmax_reads():
    q, k, v, g = qkvg()
    K0, _ = start_state()
    z, K = ops.gsa_slot_scores_chunked(q, k, g, state=K0, chunk_size=7)
    ref, Kt = [], K0
    for t in range(q.shape[2]):
        a = g[:, :, t].exp()[..., None]
        Kt = a * Kt + (1 - a) * k[:, :, t, None, :]
        ref.append(Kt @ q[:, :, t, :, None])
    torch.testing.assert_close(z, torch.cat(ref, dim=-1).transpose(-1, -2))
    torch.testing.assert_close(K, Kt)


def test_gsa_zero_gate_keeps_the_slots():
    # g = 0: alpha = 1 keeps every slot and s = 0 writes nothing
    q, k, v, g = qkvg(T=9)
    S0 = start_state()
    _, s = ops.gsa_chunked(q, k, v, torch.zeros_like(g), state=S0, chunk_size=4)
    assert_states_close(s, S0)


def test_gsa_chunked_resumes_from_a_state():
    q, k, v, g = qkvg()
    y_full, s_full = ops.gsa_recurrent(q, k, v, g)
    head = [t[:, :, :9] for t in (q, k, v, g)]
    tail = [t[:, :, 9:] for t in (q, k, v, g)]
    _, s_head = ops.gsa_chunked(*head, chunk_size=4)
    y_tail, s_tail = ops.gsa_chunked(*tail, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    assert_states_close(s_tail, s_full)


def test_gsa_gradients_agree(vector_gate_path):  # 5 does not divide T = 13; 13 and 32 are one chunk
    assert_chunked_gradients_match_loop(
        ops.gsa_recurrent, ops.gsa_chunked, lambda: qkvg(T=13, seed=3), start_state, (4, 5, 13, 32))


def test_gsa_gradcheck_chunked(vector_gate_path):
    inputs = [t.requires_grad_() for t in qkvg(B=1, H=1, T=6, Dk=3, Dv=2, M=3, seed=5)]
    state = [s.requires_grad_() for s in start_state(B=1, H=1, Dk=3, Dv=2, M=3)]

    def f(q, k, v, g, K0, V0):
        y, (K, V) = ops.gsa_chunked(q, k, v, g, state=(K0, V0), chunk_size=4, sub_chunk_size=2)
        return y, K, V

    assert torch.autograd.gradcheck(f, (*inputs, *state))


def test_gsa_strong_decays_stay_finite_in_float32():
    q, k, v, g = (t.requires_grad_() for t in qkvg(T=100, dtype=torch.float32, strength=20.0))
    y_rec, _ = ops.gsa_recurrent(q, k, v, g)
    y_chunk, (K, V) = ops.gsa_chunked(q, k, v, g, chunk_size=64)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(K).all() and torch.isfinite(V).all()
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-4)
    y_chunk.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, g))


def test_gsa_float32_long_sequence_matches_float64():
    q, k, v, g = qkvg(B=1, H=2, T=600, Dk=16, Dv=8, M=16, strength=0.05)  # > 512: runs in segments
    y64, s64 = ops.gsa_recurrent(q, k, v, g)
    y32, s32 = ops.gsa_chunked(*(t.float() for t in (q, k, v, g)), chunk_size=64)
    assert s32[0].dtype == s32[1].dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    assert_states_close(s32, tuple(s.float() for s in s64), atol=1e-4, rtol=1e-4)


def test_gsa_empty_sequence_and_bad_shapes():
    q, k, v, g = qkvg(T=0)
    y, (K, V) = ops.gsa_chunked(q, k, v, g)
    assert y.shape == (2, 2, 0, 3) and K.shape == (2, 2, 4, 5) and V.shape == (2, 2, 4, 3)
    assert not K.any() and not V.any()
    q, k, v, g = qkvg(T=4)
    with pytest.raises(ValueError, match="one log-decay per slot"):
        ops.gsa_chunked(q, k, v, g[..., 0])
    with pytest.raises(ValueError, match="v"):
        ops.gsa_recurrent(q, k, v[:, :, :3], g)
    with pytest.raises(ValueError, match="chunk_size"):
        ops.gsa_chunked(q, k, v, g, chunk_size=0)


@pytest.mark.parametrize("limit", [None, -1.0])
def test_gsa_sub_chunk_gemm_and_exact_form_both_equal_the_loop(monkeypatch, limit, vector_gate_path):
    # the default inputs' sub-chunk decays stay below the limit, so the pairs inside a sub-chunk take the
    # GEMM; a limit below zero forces the exact masked (sub, sub, M) form on the same inputs
    if limit is not None:
        monkeypatch.setattr(gla_module, "_DIAG_GEMM_MAX_DECAY", limit)
    grads = []
    for kernel in (ops.gsa_recurrent, lambda *a, state: ops.gsa_chunked(*a, state=state, chunk_size=16)):
        inputs = [t.requires_grad_() for t in qkvg(T=23, seed=4)]
        state = [s.requires_grad_() for s in start_state()]
        y, (K, V) = kernel(*inputs, state=tuple(state))
        ((y * y.detach().cos()).sum() + K.square().sum() + V.sum()).backward()
        grads.append([y, K, V, *(t.grad for t in (*inputs, *state))])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)
