"""Hyena (Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon, Ré 2023, "Hyena Hierarchy:
Towards Larger Convolutional Language Models", arXiv 2302.10866).

Order-N Hyena operator: (v, x_1, .., x_N) = short_conv_3(x W_in) (a width-3 depthwise causal conv
on all (N + 1) D projections), then the gating chain

    z_1 = v,   z_{n+1} = x_n ⊙ (h_n * z_n + b_n ⊙ z_n),   y = z_{N+1} W_out

with implicit long filters h_n[c, l] = MLP(pos(l))[c] * exp(-alpha_c l): an MLP with sine
activations over positional features [l / max_len, sin(w_k l), cos(w_k l)] (periods 2 pi / w_k
log-spaced over 2 .. max_len tokens, so the filter's resolution does not depend on max_len), and a
fixed decay window with rates alpha_c log-spaced over 1/16 .. 1/512 per token. Long convs use
the FFT (ops.fft_causal_conv).

There is no recurrent form: a step recomputes each long conv's output at t from that conv's whole
input history (O(T) per step). The state holds the short-conv tail, (N + 1) D * 2 numbers, plus
the history of the N long-conv inputs, N D T numbers: state_size(T) = 2 (N + 1) D + N D T grows
with T. Sequences beyond ``max_len`` raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.long_conv import causal_conv_last, fft_causal_conv
from recallkit.ops.short_conv import short_conv

SHORT_TAPS = 3  # the short depthwise conv on the projections


class HyenaConfig(MixerConfig):
    """Hyena operator of ``order`` gated long convolutions with implicit filters."""

    name: Literal["hyena"] = "hyena"
    order: int = Field(default=2, gt=0)
    filter_dim: int = Field(default=64, gt=0, description="width of the filter MLP")
    filter_emb_dim: int = Field(default=9, ge=3, description="positional features: 1 + 2 * bands")
    max_len: int = Field(default=2048, gt=1, description="longest sequence (filters are generated up to it)")

    def check_length(self, seq_len: int) -> None:
        if seq_len > self.max_len:
            raise ValueError(f"task seq_len={seq_len} exceeds hyena max_len={self.max_len}")

    def describe(self) -> str:
        return f"hyena(order={self.order})"


class Sin(nn.Module):
    """sin(w ⊙ x) with a learned frequency per feature (Hyena's filter activation)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """h[c, l] = MLP(pos(l))[c] * exp(-alpha_c l) for ``channels`` channels; also the skip b."""

    def __init__(self, channels: int, width: int, emb_dim: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        bands = (emb_dim - 1) // 2
        periods = torch.logspace(math.log10(2), math.log10(max_len), bands)
        self.register_buffer("omega", 2 * math.pi / periods, persistent=False)  # (bands,)
        self.register_buffer(
            "alpha", torch.logspace(math.log10(1 / 16), math.log10(1 / 512), channels), persistent=False
        )
        self.mlp = nn.Sequential(
            nn.Linear(1 + 2 * bands, width), Sin(width), nn.Linear(width, width), Sin(width),
            nn.Linear(width, channels, bias=False),
        )
        self.skip = nn.Parameter(torch.randn(channels))  # b: the conv's D term

    def forward(self, length: int) -> Tensor:
        """Filters for lags 0 .. length - 1: (channels, length)."""
        lags = torch.arange(length, device=self.omega.device, dtype=self.omega.dtype)
        angles = lags[:, None] * self.omega  # (length, bands)
        pos = torch.cat([lags[:, None] / self.max_len, angles.sin(), angles.cos()], dim=-1)
        h = self.mlp(pos).transpose(0, 1)  # (channels, length)
        return h * torch.exp(-self.alpha[:, None] * lags)  # decay window, exponent <= 0


@dataclass
class HyenaState:
    """Short-conv tail (B, (N + 1) D, 2) and the input history of each long conv, N x (B, D, t)."""

    tail: Tensor
    history: list[Tensor]


class Hyena(Mixer):
    """Order-N Hyena: in_proj -> short conv -> N x (FFT long conv, gate) -> out_proj."""

    Config = HyenaConfig

    def __init__(self, d_model: int, config: HyenaConfig) -> None:
        super().__init__(d_model, config)
        N = config.order
        self.in_proj = nn.Linear(d_model, (N + 1) * d_model)
        self.out = nn.Linear(d_model, d_model)
        bound = SHORT_TAPS**-0.5
        self.short_weight = nn.Parameter(torch.empty((N + 1) * d_model, SHORT_TAPS).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty((N + 1) * d_model).uniform_(-bound, bound))
        self.filter = ImplicitFilter(N * d_model, config.filter_dim, config.filter_emb_dim, config.max_len)

    def _check_length(self, total: int) -> None:
        if total > self.config.max_len:
            raise ValueError(f"hyena: sequence length {total} exceeds max_len={self.config.max_len}")

    def _filters(self, length: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """h_1 .. h_N, each (D, length), and the skips b_1 .. b_N, each (D,)."""
        return self.filter(length).chunk(self.config.order), self.filter.skip.chunk(self.config.order)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: HyenaState | None = None):
        B, T, D = x.shape
        state = self.init_state(B, x.device, x.dtype) if state is None else state
        total = state.history[0].shape[-1] + T
        self._check_length(total)
        u, tail = short_conv(self.in_proj(x), self.short_weight, self.short_bias, state=state.tail)
        v, *gates = u.transpose(1, 2).chunk(self.config.order + 1, dim=1)  # each (B, D, T)
        filters, skips = self._filters(total)
        z, history = v, []
        for h, b, gate, past in zip(filters, skips, gates, state.history):
            inputs = torch.cat([past, z], dim=-1)  # (B, D, past + T): this conv's whole input
            z = gate * (fft_causal_conv(inputs, h)[..., total - T:] + b[:, None] * z)  # the new T outputs
            history.append(inputs)
        return self.out(z.transpose(1, 2)), HyenaState(tail, history)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> HyenaState:
        N, D = self.config.order, self.d_model
        tail = torch.zeros(batch_size, (N + 1) * D, SHORT_TAPS - 1, device=device, dtype=dtype)
        return HyenaState(tail, [torch.zeros(batch_size, D, 0, device=device, dtype=dtype) for _ in range(N)])

    def step(self, x_t: Tensor, state: HyenaState) -> tuple[Tensor, HyenaState]:
        total = state.history[0].shape[-1] + 1
        self._check_length(total)
        u, tail = short_conv(self.in_proj(x_t).unsqueeze(1), self.short_weight, self.short_bias,
                             state=state.tail)
        v, *gates = u.squeeze(1).chunk(self.config.order + 1, dim=-1)  # each (B, D)
        filters, skips = self._filters(total)
        z, history = v, []
        for h, b, gate, past in zip(filters, skips, gates, state.history):
            inputs = torch.cat([past, z.unsqueeze(-1)], dim=-1)  # (B, D, t)
            z = gate * (causal_conv_last(inputs, h) + b * z)  # O(t): recomputes the conv at t
            history.append(inputs)
        return self.out(z), HyenaState(tail, history)

    def state_size(self, seq_len: int) -> int:
        N, D = self.config.order, self.d_model
        return (N + 1) * D * (SHORT_TAPS - 1) + N * D * seq_len
