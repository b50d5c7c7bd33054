"""FFT long conv == direct conv (forward and backward, float64)."""

from __future__ import annotations

import pytest
import torch

from recallkit import ops
from recallkit.ops.long_conv import causal_conv_last


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("T", [1, 8, 19, 64])
@pytest.mark.parametrize("filter_len", ["shorter", "equal", "longer"])
def test_fft_conv_equals_direct_conv(T, filter_len):
    taps = {"shorter": max(1, T // 3), "equal": T, "longer": T + 7}[filter_len]
    x, h = randn(2, 3, T), randn(3, taps, seed=1)
    y_fft = ops.fft_causal_conv(x, h)
    y_ref = ops.causal_conv_reference(x, h)
    torch.testing.assert_close(y_fft, y_ref)
    # against the definition itself
    t = T - 1
    expected = sum(h[:, t - s] * x[..., s] for s in range(max(0, t - taps + 1), T))
    torch.testing.assert_close(y_fft[..., t], expected)
    hist = x[..., :T]
    torch.testing.assert_close(causal_conv_last(hist, torch.nn.functional.pad(h, (0, T))), y_ref[..., -1])


def test_fft_conv_gradients_and_gradcheck():
    grads = []
    for conv in (ops.fft_causal_conv, ops.causal_conv_reference):
        x, h = randn(2, 3, 13).requires_grad_(), randn(3, 9, seed=1).requires_grad_()
        y = conv(x, h)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append((x.grad, h.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    x, h = randn(1, 2, 7).requires_grad_(), randn(2, 5, seed=2).requires_grad_()
    torch.autograd.gradcheck(ops.fft_causal_conv, (x, h))


def test_fft_conv_keeps_float32_and_leading_dims():
    x, h = randn(2, 4, 3, 10, dtype=torch.float32), randn(3, 10, seed=1, dtype=torch.float32)
    y = ops.fft_causal_conv(x, h)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y, ops.causal_conv_reference(x, h), atol=1e-5, rtol=1e-5)
