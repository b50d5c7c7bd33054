"""Diagonal SSMs: S4D kernel conv == SSM recurrence, H3's chunked form == its recurrence == the FFT
conv of the outer products (forward and backward, float64)."""

from __future__ import annotations

import math

import pytest
import torch

from recallkit import ops


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def ssm_params(C=3, N=4, complex_=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    if complex_:  # S4D-Lin-like: A_n = -1/2 + i pi n
        A = torch.complex(-0.5 * torch.ones(C, N, dtype=torch.float64),
                          math.pi * torch.arange(N, dtype=torch.float64).expand(C, N))
        B = torch.complex(torch.randn(C, N, generator=g, dtype=torch.float64),
                          torch.randn(C, N, generator=g, dtype=torch.float64))
        Cm = torch.complex(torch.randn(C, N, generator=g, dtype=torch.float64),
                           torch.randn(C, N, generator=g, dtype=torch.float64))
    else:  # S4D-Real: A_n = -(n + 1)
        A = -(torch.arange(N, dtype=torch.float64) + 1).expand(C, N).clone()
        B = torch.randn(C, N, generator=g, dtype=torch.float64)
        Cm = torch.randn(C, N, generator=g, dtype=torch.float64)
    dt = torch.exp(torch.empty(C, dtype=torch.float64).uniform_(math.log(1e-2), math.log(0.5), generator=g))
    return A, B, Cm, dt


@pytest.mark.parametrize("complex_", [False, True])
def test_ssm_kernel_conv_equals_recurrence(complex_):
    A, B, C, dt = ssm_params(complex_=complex_)
    u = randn(2, 3, 23, seed=4)
    y_rec, s_rec = ops.diagonal_ssm_recurrent(u, A, B, C, dt)
    y_conv, s_conv = ops.diagonal_ssm_conv(u, A, B, C, dt)
    torch.testing.assert_close(y_conv, y_rec)
    torch.testing.assert_close(s_conv, s_rec)
    assert s_rec.shape == (2, 3, 4) and s_rec.is_complex() == complex_
    # the kernel is the impulse response
    impulse = torch.zeros(1, 3, 23, dtype=torch.float64)
    impulse[..., 0] = 1
    K = ops.diagonal_ssm_kernel(A, B, C, dt, 23)
    torch.testing.assert_close(ops.diagonal_ssm_recurrent(impulse, A, B, C, dt)[0][0], K)
    assert K.dtype == torch.float64 and not K.is_complex()


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("split", [1, 9, 22])
def test_ssm_conv_resumes_from_a_state(complex_, split):
    A, B, C, dt = ssm_params(complex_=complex_, seed=1)
    u = randn(2, 3, 23, seed=5)
    y_full, s_full = ops.diagonal_ssm_recurrent(u, A, B, C, dt)
    _, s_head = ops.diagonal_ssm_conv(u[..., :split], A, B, C, dt)
    y_tail, s_tail = ops.diagonal_ssm_conv(u[..., split:], A, B, C, dt, state=s_head)
    torch.testing.assert_close(y_tail, y_full[..., split:])
    torch.testing.assert_close(s_tail, s_full)


@pytest.mark.parametrize("complex_", [False, True])
def test_ssm_gradients_agree(complex_):
    grads = []
    for form in (ops.diagonal_ssm_recurrent, ops.diagonal_ssm_conv):
        A, B, C, dt = (p.requires_grad_() for p in ssm_params(complex_=complex_, seed=2))
        u = randn(2, 3, 11, seed=6).requires_grad_()
        y, s = form(u, A, B, C, dt)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
        loss = loss + (s.real if s.is_complex() else s).sum()
        loss.backward()
        grads.append([u.grad, A.grad, B.grad, C.grad, dt.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_ssm_gradcheck_real():
    A, B, C, dt = (p.requires_grad_() for p in ssm_params(C=2, N=2, seed=3))
    u = randn(1, 2, 6, seed=7).requires_grad_()
    torch.autograd.gradcheck(lambda *args: ops.diagonal_ssm_conv(*args)[0], (u, A, B, C, dt))


def h3_inputs(Bsz=2, H=2, T=23, dk=3, dv=4, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(Bsz, H, T, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(Bsz, H, T, dv, generator=g, dtype=torch.float64)
    A = -torch.rand(H, N, generator=g, dtype=torch.float64) * 2 - 0.1
    B, C = (torch.randn(H, N, generator=g, dtype=torch.float64) for _ in range(2))
    dt = torch.rand(H, generator=g, dtype=torch.float64) * 0.5 + 0.01
    D = torch.randn(H, generator=g, dtype=torch.float64)
    return q, k, v, A, B, C, dt, D


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])
def test_h3_chunked_equals_recurrent_and_fft(chunk_size):
    q, k, v, A, B, C, dt, D = h3_inputs()
    y_rec, s_rec = ops.h3_ssm_recurrent(q, k, v, A, B, C, dt, D)
    y_chunk, s_chunk = ops.h3_ssm_chunked(q, k, v, A, B, C, dt, D, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec)
    torch.testing.assert_close(s_chunk, s_rec)
    assert s_rec.shape == (2, 2, 3, 3, 4)
    # the same thing as the generic diagonal SSM (FFT) over every entry of k v^T
    kv = torch.einsum("bhti,bhtj->bijht", k, v)
    s, _ = ops.diagonal_ssm_conv(kv, A, B, C, dt)
    y_fft = torch.einsum("bhti,bijht->bhtj", q, s + D[:, None] * kv)
    torch.testing.assert_close(y_fft, y_rec)
    assert ops.h3_ssm_chunked(q, k, v, A, B, C, dt, D, chunk_size=chunk_size, return_state=False)[1] is None


@pytest.mark.parametrize("split", [1, 9, 22])
def test_h3_chunked_resumes_from_a_state(split):
    q, k, v, A, B, C, dt, D = h3_inputs(seed=1)
    y_full, s_full = ops.h3_ssm_recurrent(q, k, v, A, B, C, dt, D)
    head = [t[:, :, :split] for t in (q, k, v)]
    tail = [t[:, :, split:] for t in (q, k, v)]
    _, s_head = ops.h3_ssm_chunked(*head, A, B, C, dt, D, chunk_size=4)
    y_tail, s_tail = ops.h3_ssm_chunked(*tail, A, B, C, dt, D, state=s_head, chunk_size=4)
    torch.testing.assert_close(y_tail, y_full[:, :, split:])
    torch.testing.assert_close(s_tail, s_full)


def test_h3_gradients_agree_and_gradcheck():
    grads = []
    for form in ("recurrent", "chunked"):
        inputs = [t.requires_grad_() for t in h3_inputs(T=13, seed=2)]
        if form == "recurrent":
            y, s = ops.h3_ssm_recurrent(*inputs)
        else:
            y, s = ops.h3_ssm_chunked(*inputs, chunk_size=4)
        ((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum() + s.sum()).backward()
        grads.append([t.grad for t in inputs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    inputs = [t.requires_grad_() for t in h3_inputs(Bsz=1, H=1, T=6, dk=2, dv=2, N=2, seed=3)]
    torch.autograd.gradcheck(lambda *args: ops.h3_ssm_chunked(*args, chunk_size=4)[0], inputs)


def test_the_ssm_kernels_live_with_the_ssms_not_the_long_convs():
    from recallkit.ops import long_conv

    for kernel in (ops.diagonal_ssm_conv, ops.diagonal_ssm_kernel, ops.diagonal_ssm_recurrent,
                   ops.h3_ssm_chunked, ops.h3_ssm_recurrent):
        assert kernel.__module__ == "recallkit.ops.diagonal_ssm"
        assert not hasattr(long_conv, kernel.__name__)
