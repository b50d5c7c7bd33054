"""RWKV-6 through the chunked gated linear attention (keys, values, gates shifted one token, plus the
bonus) == the token recurrence, forward and backward, from zero and nonzero states."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk


def rkvgu(B=2, H=2, T=23, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    r, k = (torch.randn(B, H, T, Dk, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    g = -torch.exp(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype) - 1) * strength  # -exp(d_t)
    u = torch.randn(H, Dk, generator=gen, dtype=dtype)
    return r, k, v, g, u


def start_state(B=2, H=2, Dk=5, Dv=3, seed=9, dtype=torch.float64):
    return torch.randn(B, H, Dk, Dv, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_rwkv6_chunked_equals_recurrent(chunk_size, from_state):
    r, k, v, g, u = rkvgu()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.rwkv6_recurrent(r, k, v, g, u, state=state)
    y_chunk, s_chunk = ops.rwkv6_chunked(r, k, v, g, u, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert s_rec.shape == (2, 2, 5, 3)


def test_rwkv6_recurrence_is_the_paper_sum():
    # eq. 21 of arXiv 2404.05892 from a zero state: o_t = r_t^T (Diag(u) k_t v_t^T
    # + sum_{i<t} Diag(prod_{j=i+1}^{t-1} w_j) k_i v_i^T), written out as the double sum
    r, k, v, g, u = (t[0, 0] if t.dim() == 4 else t[0] for t in rkvgu(B=1, H=1, T=7))
    y, s = ops.rwkv6_recurrent(*(t[None, None] for t in (r, k, v, g)), u[None])
    w = g.exp()  # (T, Dk)
    for t in range(7):
        wkv = torch.diag(u) @ torch.outer(k[t], v[t])
        for i in range(t):
            decay = torch.prod(w[i + 1:t], dim=0) if i + 1 < t else torch.ones_like(u)
            wkv = wkv + torch.diag(decay) @ torch.outer(k[i], v[i])
        torch.testing.assert_close(y[0, 0, t], r[t] @ wkv)
    final = sum(torch.diag(torch.prod(w[i + 1:], dim=0)) @ torch.outer(k[i], v[i]) for i in range(7))
    torch.testing.assert_close(s[0, 0], final)


def test_rwkv6_zero_bonus_reads_before_the_write():
    # u = 0: o_t = r_t^T S_{t-1}, i.e. GLA's output with everything but r shifted one token later
    r, k, v, g, u = rkvgu()
    y, s = ops.rwkv6_chunked(r, k, v, g, torch.zeros_like(u), chunk_size=8)
    _, s_gla = ops.gated_linear_attention_recurrent(r, k, v, g)
    y_gla, _ = ops.gated_linear_attention_recurrent(r, F.pad(k, (0, 0, 1, -1)), F.pad(v, (0, 0, 1, -1)),
                                                    F.pad(g, (0, 0, 1, -1)))
    torch.testing.assert_close(y, y_gla)
    torch.testing.assert_close(s, s_gla)  # the state is GLA's: same write, only the read moved


def test_rwkv6_chunked_resumes_from_a_state():
    r, k, v, g, u = rkvgu()
    y_full, s_full = ops.rwkv6_recurrent(r, k, v, g, u)
    head = [t[:, :, :9] for t in (r, k, v, g)]
    tail = [t[:, :, 9:] for t in (r, k, v, g)]
    _, s_head = ops.rwkv6_chunked(*head, u, chunk_size=4)
    y_tail, s_tail = ops.rwkv6_chunked(*tail, u, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)


def test_rwkv6_gradients_agree(vector_gate_path):  # 5 does not divide T = 13; 13 and 32 are one chunk
    assert_chunked_gradients_match_loop(
        ops.rwkv6_recurrent, ops.rwkv6_chunked, lambda: rkvgu(T=13, seed=3), start_state, (4, 5, 13, 32))


def test_rwkv6_gradcheck_chunked(vector_gate_path):
    inputs = [t.requires_grad_() for t in rkvgu(B=1, H=2, T=6, Dk=3, Dv=2, seed=5)]
    state = start_state(B=1, H=2, Dk=3, Dv=2).requires_grad_()

    def f(r, k, v, g, u, state):
        return ops.rwkv6_chunked(r, k, v, g, u, state=state, chunk_size=4, sub_chunk_size=2)

    assert torch.autograd.gradcheck(f, (*inputs, state))


def test_rwkv6_strong_decays_stay_finite_in_float32():
    r, k, v, g, u = (t.requires_grad_() for t in rkvgu(T=100, dtype=torch.float32, strength=50.0))
    y_rec, _ = ops.rwkv6_recurrent(r, k, v, g, u)
    y_chunk, s_chunk = ops.rwkv6_chunked(r, k, v, g, u, chunk_size=64)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(s_chunk).all()
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-4)
    y_chunk.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (r, k, v, g, u))


def test_rwkv6_float32_long_sequence_matches_float64():
    r, k, v, g, u = rkvgu(B=1, H=2, T=600, Dk=16, Dv=8, strength=0.05)  # > 512: GLA runs in segments
    y64, s64 = ops.rwkv6_recurrent(r, k, v, g, u, state=start_state(1, 2, 16, 8))
    y32, s32 = ops.rwkv6_chunked(*(t.float() for t in (r, k, v, g, u)), chunk_size=64,
                                 state=start_state(1, 2, 16, 8).float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32, s64.float(), atol=1e-4, rtol=1e-4)


def test_rwkv6_empty_sequence_and_bad_shapes():
    r, k, v, g, u = rkvgu(T=0)
    y, s = ops.rwkv6_chunked(r, k, v, g, u)
    assert y.shape == (2, 2, 0, 3) and s.shape == (2, 2, 5, 3) and not s.any()
    r, k, v, g, u = rkvgu(T=4)
    with pytest.raises(ValueError, match="one log-decay per key channel"):
        ops.rwkv6_chunked(r, k, v, g[..., 0], u)
    with pytest.raises(ValueError, match="one bonus per head"):
        ops.rwkv6_recurrent(r, k, v, g, u[0])
    with pytest.raises(ValueError, match="r, k must be"):
        ops.rwkv6_chunked(r, k[..., :2], v, g, u)
    with pytest.raises(ValueError, match="chunk_size"):
        ops.rwkv6_chunked(r, k, v, g, u, chunk_size=0)
