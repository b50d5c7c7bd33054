"""Short-conv wrapper (the Zoology / Based recipe): y = mixer(conv_K(x)).

A depthwise causal convolution of kernel K in front of any mixer hands every position its K - 1
predecessors, the "previous token" feature that recall circuits otherwise learn slowly. The state
is the inner mixer's plus the conv tail of K - 1 inputs: state_size = inner + D * (K - 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recallkit.kv.protocol import LayerCache
from recallkit.mixers.base import Mixer
from recallkit.ops.short_conv import short_conv


@dataclass
class ShortConvState:
    """Conv tail (B, D, K - 1) and the wrapped mixer's state."""

    tail: Tensor
    inner: Any


class ShortConvMixer(Mixer):
    """Wraps ``inner`` with a depthwise causal conv of ``kernel_size`` taps."""

    def __init__(self, inner: Mixer, kernel_size: int) -> None:
        super().__init__(inner.d_model, inner.config)
        self.inner = inner
        self.prefix_aware, self.kv_cache = inner.prefix_aware, inner.kv_cache
        self.kernel_size = kernel_size
        # (D, K) filter and (D,) bias, initialised like nn.Conv1d: U(-1/sqrt(K), 1/sqrt(K))
        bound = kernel_size**-0.5
        self.conv_weight = nn.Parameter(torch.empty(inner.d_model, kernel_size).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(inner.d_model).uniform_(-bound, bound))

    @property
    def core(self) -> Mixer:
        return self.inner.core

    def forward(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        return self.inner(short_conv(x, self.conv_weight, self.conv_bias)[0], prefix_len)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype, *,
                   cache: LayerCache | None = None) -> ShortConvState:
        tail = torch.zeros(batch_size, self.d_model, self.kernel_size - 1, device=device, dtype=dtype)
        inner = (self.inner.init_state(batch_size, device, dtype) if cache is None
                 else self.inner.init_state(batch_size, device, dtype, cache=cache))
        return ShortConvState(tail, inner)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: ShortConvState | None = None):
        h, tail = short_conv(x, self.conv_weight, self.conv_bias, state=None if state is None else state.tail)
        y, inner = self.inner.prefill(h, prefix_len, None if state is None else state.inner)
        return y, ShortConvState(tail, inner)

    def step(self, x_t: Tensor, state: ShortConvState) -> tuple[Tensor, ShortConvState]:
        h, tail = short_conv(x_t.unsqueeze(1), self.conv_weight, self.conv_bias, state=state.tail)
        y, inner = self.inner.step(h.squeeze(1), state.inner)
        return y, ShortConvState(tail, inner)

    def state_size(self, seq_len: int) -> int:
        return self.inner.state_size(seq_len) + self.d_model * (self.kernel_size - 1)
