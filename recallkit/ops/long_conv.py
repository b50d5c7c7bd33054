"""Causal depthwise long convolutions: y[c, t] = sum_{s <= t} h[c, t - s] x[c, s] per channel c.

The parallel form is an FFT product on sequences zero-padded to 2T (no circular wrap-around reaches
the first T outputs); the reference is a loop over lags. Inputs are (..., D, T) with any leading
dims, filters (D, T'). The diagonal SSMs that are computed as such a convolution (S4D, H3) live in
``recallkit.ops.diagonal_ssm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.numerics import compute_dtype


def _fit_filter(h: Tensor, length: int) -> Tensor:
    """Truncate a (D, T') filter to ``length`` taps, or zero-pad a shorter one."""
    return h[:, :length] if h.shape[-1] >= length else F.pad(h, (0, length - h.shape[-1]))


def fft_causal_conv(x: Tensor, h: Tensor) -> Tensor:
    """Causal depthwise convolution by FFT, O(T log T) per channel.

    Args:
        x: (..., D, T) inputs.
        h: (D, T') filters; T' >= T is truncated, shorter filters are zero-padded.
    Returns:
        y (..., D, T) in x's dtype, y[..., c, t] = sum_{s <= t} h[c, t - s] x[..., c, s].
    """
    T = x.shape[-1]
    if T == 0:  # an FFT of length 0 is an error
        return x.clone()
    dtype = compute_dtype(x, h)  # half inputs are upcast for the FFT
    n = 2 * T  # >= 2T - 1: the wrap-around of the circular product lands beyond index T - 1
    x_f = torch.fft.rfft(x.to(dtype), n=n)
    h_f = torch.fft.rfft(_fit_filter(h, T).to(dtype), n=n)
    return torch.fft.irfft(x_f * h_f, n=n)[..., :T].to(x.dtype)


def causal_conv_reference(x: Tensor, h: Tensor) -> Tensor:
    """Direct causal convolution, a loop over the lags: O(T^2) per channel. Same contract as
    :func:`fft_causal_conv`."""
    T = x.shape[-1]
    h = _fit_filter(h, T)
    y = x * h[:, :1]
    for lag in range(1, T):
        y = y + F.pad(x[..., : T - lag], (lag, 0)) * h[:, lag : lag + 1]  # x shifted right by lag
    return y


def causal_conv_last(history: Tensor, h: Tensor) -> Tensor:
    """Output at the last position only, y[..., c, t - 1] for a history of t inputs: O(t).

    Args:
        history: (..., D, t) all inputs so far, oldest first.
        h: (D, T') filters with T' >= t.
    Returns:
        (..., D).
    """
    t = history.shape[-1]
    return (history * h[:, :t].flip(-1)).sum(-1)  # h[t - 1 - s] pairs with x[s]
