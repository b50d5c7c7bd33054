"""Short causal depthwise convolution: y_t = b + sum_{i<K} w_i * x_{t-K+1+i} per channel.

Its recurrent state is the tail of the last K - 1 inputs, (B, D, K - 1): zeros before the first
token. Inputs are (B, T, D), the model layout.
"""

from __future__ import annotations

import torch
from torch import Tensor


def short_conv(x: Tensor, weight: Tensor, bias: Tensor | None, *, state: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Parallel form.

    Args:
        x: (B, T, D) inputs.
        weight: (D, K) filter per channel; bias: (D,) or None.
        state: the tail (B, D, K - 1) of previous inputs, or None for zeros.
    Returns:
        y (B, T, D) and the new tail (B, D, K - 1).
    """
    B, T, D = x.shape
    K = weight.shape[1]
    tail = x.new_zeros(B, D, K - 1) if state is None else state
    padded = torch.cat([tail.transpose(1, 2), x], dim=1)  # (B, K - 1 + T, D)
    # K shifted multiply-adds: faster on CPU than a grouped conv1d for the short kernels used here
    y = padded[:, K - 1 :] * weight[:, K - 1]
    for i in range(K - 1):
        y = y + padded[:, i : i + T] * weight[:, i]
    if bias is not None:
        y = y + bias
    return y, padded[:, T:].transpose(1, 2)


def short_conv_recurrent(x: Tensor, weight: Tensor, bias: Tensor | None, *, state: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Token loop (the reference): same arguments and returns as :func:`short_conv`."""
    B, T, D = x.shape
    K = weight.shape[1]
    tail = x.new_zeros(B, D, K - 1) if state is None else state
    outputs = []
    for t in range(T):
        window = torch.cat([tail, x[:, t, :, None]], dim=2)  # (B, D, K)
        y = (window * weight).sum(-1)
        outputs.append(y if bias is None else y + bias)
        tail = window[:, :, 1:]
    return torch.stack(outputs, dim=1) if outputs else x, tail
