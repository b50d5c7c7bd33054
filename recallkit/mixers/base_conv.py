"""BaseConv (Arora, Eyuboglu et al. 2023, "Zoology: Measuring and Improving Recall in Efficient
Language Models", arXiv 2312.04927).

The paper's gated convolution: y = (u W + b_1) ⊙ (h * u + b_2), a linear projection of the input
gated by a causal depthwise convolution of the same input (no projection on the conv branch and no
output projection in the paper; ``out_proj=True`` adds one). Recurrent state:

- ``kernel_size`` = K (int): a short explicit filter; the state is the conv tail of the last
  K - 1 inputs, state_size = D * (K - 1), constant in T.
- ``kernel_size="long"``: an explicit learned filter of ``max_len`` taps applied by FFT. Zoology
  uses implicit (MLP-generated) long filters; here the filter is a free parameter initialised as
  noise under an exponential decay window (time constants log-spaced over 4 .. max_len tokens).
  A long convolution has no finite recurrent form: the state is the whole input history, so
  state_size(T) = D * T grows with T, and each step costs O(T). Sequences beyond max_len raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.long_conv import causal_conv_last, fft_causal_conv
from recallkit.ops.short_conv import short_conv


class BaseConvConfig(MixerConfig):
    """BaseConv with a short (int taps) or long (``"long"``: max_len taps, FFT) filter."""

    name: Literal["base_conv"] = "base_conv"
    kernel_size: int | Literal["long"] = "long"
    max_len: int = Field(default=2048, gt=0, description="filter length and longest sequence (long only)")
    out_proj: bool = Field(default=False, description="linear output projection (not in the paper)")

    @field_validator("kernel_size")
    @classmethod
    def _taps(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 2:
            raise ValueError(f"kernel_size={value} must be >= 2 taps, or 'long'")
        return value

    def check_length(self, seq_len: int) -> None:
        if self.kernel_size == "long" and seq_len > self.max_len:
            raise ValueError(f"task seq_len={seq_len} exceeds base_conv max_len={self.max_len}")

    def describe(self) -> str:
        return f"base_conv({self.kernel_size})"


@dataclass
class BaseConvState:
    """Conv input memory: the tail (B, D, K - 1) for short filters, the full history (B, D, t) for long."""

    inputs: Tensor


class BaseConv(Mixer):
    """y = (x W + b_1) ⊙ (h * x + b_2) [then W_out], h short or long depthwise causal."""

    Config = BaseConvConfig

    def __init__(self, d_model: int, config: BaseConvConfig) -> None:
        super().__init__(d_model, config)
        self.long = config.kernel_size == "long"
        self.proj = nn.Linear(d_model, d_model)  # u W + b_1
        self.conv_bias = nn.Parameter(torch.zeros(d_model))  # b_2
        if self.long:
            # h[c, l] = noise * exp(-l / tau_c) with unit L2 norm per channel, so the conv output
            # keeps the input's scale; tau_c log-spaced over 4 .. max_len tokens
            L = config.max_len
            tau = torch.logspace(math.log10(4), math.log10(max(L, 4)), d_model)
            window = torch.exp(-torch.arange(L)[None, :] / tau[:, None])  # (D, L)
            h = torch.randn(d_model, L) * window
            self.filter = nn.Parameter(h / h.norm(dim=-1, keepdim=True))
        else:
            bound = config.kernel_size**-0.5  # nn.Conv1d's init
            self.filter = nn.Parameter(torch.empty(d_model, config.kernel_size).uniform_(-bound, bound))
        self.out = nn.Linear(d_model, d_model) if config.out_proj else nn.Identity()

    def _check_length(self, total: int) -> None:
        if self.long and total > self.config.max_len:
            raise ValueError(f"base_conv: sequence length {total} exceeds max_len={self.config.max_len}")

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: BaseConvState | None = None):
        B, T, D = x.shape
        memory = self.init_state(B, x.device, x.dtype).inputs if state is None else state.inputs
        if self.long:
            self._check_length(memory.shape[-1] + T)
            history = torch.cat([memory, x.transpose(1, 2)], dim=-1)  # (B, D, past + T)
            conv = fft_causal_conv(history, self.filter)[..., history.shape[-1] - T:]  # the new T outputs
            conv = conv.transpose(1, 2) + self.conv_bias
            memory = history
        else:
            conv, memory = short_conv(x, self.filter, self.conv_bias, state=memory)  # (B, T, D), (B, D, K-1)
        return self.out(self.proj(x) * conv), BaseConvState(memory)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> BaseConvState:
        width = 0 if self.long else self.config.kernel_size - 1
        return BaseConvState(torch.zeros(batch_size, self.d_model, width, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: BaseConvState) -> tuple[Tensor, BaseConvState]:
        if not self.long:
            y, state = self.prefill(x_t.unsqueeze(1), state=state)
            return y.squeeze(1), state
        history = torch.cat([state.inputs, x_t.unsqueeze(-1)], dim=-1)  # (B, D, t)
        self._check_length(history.shape[-1])
        conv = causal_conv_last(history, self.filter) + self.conv_bias  # O(t) per step
        return self.out(self.proj(x_t) * conv), BaseConvState(history)

    def state_size(self, seq_len: int) -> int:
        return self.d_model * (seq_len if self.long else self.config.kernel_size - 1)
