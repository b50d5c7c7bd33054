"""Chunked Mamba-3 (exponential-trapezoidal SSM through the scalar-gated chunked kernel) == its token
recurrence, forward and backward, from zero and nonzero states; the rotation helper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import assert_chunked_gradients_match_loop
from recallkit.ops.mamba3 import rotate_pairs

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk


def inputs(B=2, H=2, T=23, Dk=6, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, Dk, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    dt = F.softplus(torch.randn(B, H, T, generator=gen, dtype=dtype))
    g = -dt * F.softplus(torch.randn(B, H, T, generator=gen, dtype=dtype)) * strength  # dt * A, A < 0
    lam = torch.sigmoid(torch.randn(B, H, T, generator=gen, dtype=dtype))
    return q, k, v, g, dt, lam


def start_state(B=2, H=2, Dk=6, Dv=3, seed=9, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, *shape, generator=gen, dtype=dtype) for shape in ((Dk, Dv), (Dk,), (Dv,)))


def assert_states_close(a, b, **tol):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, **tol)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_mamba3_chunked_equals_recurrent(chunk_size, from_state):
    args = inputs()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.mamba3_recurrent(*args, state=state)
    y_chunk, s_chunk = ops.mamba3_chunked(*args, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    assert_states_close(s_chunk, s_rec, atol=1e-12, rtol=1e-12)
    assert [s.shape for s in s_rec] == [(2, 2, 6, 3), (2, 2, 6), (2, 2, 3)]


def test_mamba3_recurrence_is_the_paper_update():
    # h_t = e^{dt A} h_{t-1} + (1 - lam) dt e^{dt A} B_{t-1} x_{t-1}^T + lam dt B_t x_t^T, y_t = h_t^T C_t
    q, k, v, g, dt, lam = inputs(B=1, H=1, T=6)
    h, k0, v0 = (s[0, 0] for s in start_state(B=1, H=1))
    y, s = ops.mamba3_recurrent(q, k, v, g, dt, lam, state=(h[None, None], k0[None, None], v0[None, None]))
    prev = torch.outer(k0, v0)
    for t in range(6):
        a, d, lt = g[0, 0, t].exp(), dt[0, 0, t], lam[0, 0, t]
        now = torch.outer(k[0, 0, t], v[0, 0, t])
        h = a * h + (1 - lt) * d * a * prev + lt * d * now
        torch.testing.assert_close(y[0, 0, t], h.T @ q[0, 0, t])
        prev = now
    torch.testing.assert_close(s[0][0, 0], h)
    torch.testing.assert_close(s[1][0, 0], k[0, 0, -1])
    torch.testing.assert_close(s[2][0, 0], v[0, 0, -1])


def test_lam_one_is_the_euler_rule_of_mamba2():
    # lam = 1: no trapezoid term, h_t = a_t h_{t-1} + dt_t k_t v_t^T (gated linear attention on dt * v)
    q, k, v, g, dt, lam = inputs()
    state = start_state()
    y, s = ops.mamba3_chunked(q, k, v, g, dt, torch.ones_like(lam), state=state, chunk_size=5)
    y_ref, h_ref = ops.gated_linear_attention_recurrent(q, k, v * dt[..., None], g, state=state[0])
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s[0], h_ref)


def test_mamba3_chunked_resumes_from_a_state():
    args = inputs()
    y_full, s_full = ops.mamba3_recurrent(*args)
    _, s_head = ops.mamba3_chunked(*(t[:, :, :9] for t in args), chunk_size=4)
    y_tail, s_tail = ops.mamba3_chunked(*(t[:, :, 9:] for t in args), chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    assert_states_close(s_tail, s_full)


def test_mamba3_gradients_agree():  # 5 does not divide T = 13; 13 and 32 are one chunk
    assert_chunked_gradients_match_loop(
        ops.mamba3_recurrent, ops.mamba3_chunked, lambda: inputs(T=13, seed=3), start_state, (4, 5, 13, 32))


def test_mamba3_gradcheck_chunked():
    args = [t.requires_grad_() for t in inputs(B=1, H=1, T=6, Dk=3, Dv=2, seed=5)]
    state = [s.requires_grad_() for s in start_state(B=1, H=1, Dk=3, Dv=2)]

    def f(q, k, v, g, dt, lam, h, k0, v0):
        y, (h, k_last, v_last) = ops.mamba3_chunked(q, k, v, g, dt, lam, state=(h, k0, v0), chunk_size=4)
        return y, h, k_last, v_last

    assert torch.autograd.gradcheck(f, (*args, *state))


def test_mamba3_float32_long_sequence_matches_float64():
    args = inputs(B=1, H=2, T=600, Dk=16, Dv=8, strength=0.05)  # > 512: the kernel runs in segments
    y64, s64 = ops.mamba3_recurrent(*args)
    y32, s32 = ops.mamba3_chunked(*(t.float() for t in args), chunk_size=64)
    assert all(s.dtype == torch.float32 for s in s32)
    scale = y64.abs().max()
    torch.testing.assert_close(y32 / scale, (y64 / scale).float(), atol=1e-5, rtol=1e-4)
    assert_states_close(s32, tuple(s.float() for s in s64), atol=1e-4, rtol=1e-4)


def test_rotate_pairs_is_complex_multiplication():
    x = torch.randn(3, 10, dtype=torch.float64)
    angles = torch.randn(3, 4, dtype=torch.float64)  # rotates channels 0..7, leaves 8, 9
    z = torch.view_as_complex(x[:, :8].reshape(3, 4, 2).contiguous()) * torch.exp(1j * angles)
    expected = torch.cat([torch.view_as_real(z).reshape(3, 8), x[:, 8:]], dim=-1)
    torch.testing.assert_close(rotate_pairs(x, angles), expected)
    # the RoPE property the mixer relies on: rotated q . rotated k depends on the angle difference only
    q, k = torch.randn(2, 8, dtype=torch.float64)
    a, b = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(rotate_pairs(q, a) @ rotate_pairs(k, b), q @ rotate_pairs(k, b - a))
    torch.testing.assert_close(rotate_pairs(x, angles + 2 * math.pi), rotate_pairs(x, angles))


def test_mamba3_empty_sequence_and_bad_shapes():
    args = inputs(T=0)
    y, s = ops.mamba3_chunked(*args)
    assert y.shape == (2, 2, 0, 3) and not any(t.any() for t in s)
    q, k, v, g, dt, lam = inputs(T=4)
    with pytest.raises(ValueError, match=r"lam must be \(B, H, T\)"):
        ops.mamba3_chunked(q, k, v, g, dt, lam[..., None])
    with pytest.raises(ValueError, match="q, k must be"):
        ops.mamba3_recurrent(q, k[..., :2], v, g, dt, lam)
    with pytest.raises(ValueError, match="chunk_size"):
        ops.mamba3_chunked(q, k, v, g, dt, lam, chunk_size=0)
    with pytest.raises(ValueError, match="4 angles rotate 8 channels"):
        rotate_pairs(torch.zeros(2, 6), torch.zeros(2, 4))
