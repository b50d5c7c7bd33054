"""Mamba-2 (Dao & Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms
Through Structured State Space Duality", arXiv 2405.21060).

SSD per head h with a scalar data-dependent decay a_t = exp(dt_t A_h), dt_t = softplus(dt_t' + dt_bias):
h_t = a_t h_{t-1} + B_t (dt_t x_t)^T, y_t = h_t^T C_t + D_h x_t, h: (N, P). That is gated linear
attention with keys B, queries C (shared by all heads, ngroups = 1), values dt * x and a scalar gate
log a_t = dt_t A_h. The block: in_proj to (z, x, B, C, dt), a depthwise causal conv of d_conv taps
+ SiLU on (x, B, C), the SSD, y + D x, a gated RMSNorm RMSNorm(y ⊙ SiLU(z)) and out_proj;
d_inner = expand * d_model = H * P. The state per layer is h (H, N, P) plus the conv tail
(d_inner + 2N, d_conv - 1): H * P * N + (d_inner + 2N) * (d_conv - 1) numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import DtMax, DtMin, MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.gated_linear_attention import (
    gated_linear_attention_chunked,
    gated_linear_attention_recurrent,
)
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.short_conv import short_conv


class Mamba2Config(MixerConfig):
    """Mamba-2 block: SSD with a scalar decay per head, shared B/C, internal conv and gated RMSNorm."""

    name: Literal["mamba2"] = "mamba2"
    d_state: int = Field(default=16, gt=0, description="N, state width per head (keys B / queries C)")
    expand: int = Field(default=2, gt=0, description="d_inner = expand * d_model")
    head_dim: int = Field(default=16, gt=0, description="P; H = d_inner / P heads")
    d_conv: int = Field(default=4, gt=0, description="taps of the internal depthwise causal conv")
    dt_min: DtMin = 1e-3
    dt_max: DtMax = 0.1
    chunk_size: int = Field(default=32, gt=0, description="C of the chunked scalar-gate kernel (32 took "
                            "0.67-0.81x the time of 64 over training steps, docs/results.md)")

    def check_width(self, d_model: int) -> None:
        if (self.expand * d_model) % self.head_dim:
            raise ValueError(
                f"mamba2 d_inner = expand * d_model = {self.expand * d_model} is not divisible by "
                f"head_dim={self.head_dim}"
            )

    def describe(self) -> str:
        return f"mamba2(d_state={self.d_state})"


@dataclass
class Mamba2State:
    """Recurrent state of one Mamba-2 layer."""

    conv: Tensor  # (B, d_inner + 2N, d_conv - 1): the last conv inputs of (x, B, C)
    ssm: Tensor  # (B, H, N, P), float32


class Mamba2(Mixer):
    """Mamba-2 mixer; training and prefill use the chunked scalar-gate (SSD) kernel."""

    Config = Mamba2Config

    def __init__(self, d_model: int, config: Mamba2Config) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        Dn, N, P, K = config.expand * d_model, config.d_state, config.head_dim, config.d_conv
        H = Dn // P
        self.d_inner, self.d_state, self.head_dim, self.num_heads = Dn, N, P, H
        self.conv_dim = Dn + 2 * N
        self.in_proj = nn.Linear(d_model, 2 * Dn + 2 * N + H, bias=False)  # z, (x, B, C), dt
        bound = K**-0.5  # like nn.Conv1d with groups = channels: U(-1/sqrt(K), 1/sqrt(K))
        self.conv_weight = nn.Parameter(torch.empty(self.conv_dim, K).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(self.conv_dim).uniform_(-bound, bound))
        # paper's init: dt = softplus(dt_bias) log-uniform in [dt_min, dt_max], A_h uniform in [1, 16],
        # so log-decays dt * A start in ~[-1.6, -1e-3] per step (memories of 1 to ~1000 tokens)
        dt = torch.empty(H).uniform_(math.log(config.dt_min), math.log(config.dt_max)).exp().clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())  # A = -exp(A_log) < 0
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # as in the paper; recallkit.training honours it
        self.norm_weight = nn.Parameter(torch.ones(Dn))
        self.out_proj = nn.Linear(Dn, d_model, bias=False)

    def _mix(self, x: Tensor, state: Mamba2State | None, kernel) -> tuple[Tensor, Mamba2State]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a gated-linear-attention
        form."""
        Bsz, T, _ = x.shape
        Dn, N, P, H = self.d_inner, self.d_state, self.head_dim, self.num_heads
        z, xbc, dt = self.in_proj(x).split([Dn, self.conv_dim, H], dim=-1)
        xbc, tail = short_conv(xbc, self.conv_weight, self.conv_bias,
                               state=None if state is None else state.conv)
        xs, Bm, Cm = F.silu(xbc).split([Dn, N, N], dim=-1)  # (B, T, Dn), (B, T, N), (B, T, N)
        ct = compute_dtype(x)  # float32 for float32 / half inputs, float64 for float64
        dt = F.softplus(dt.to(ct) + self.dt_bias).transpose(1, 2)  # (B, H, T), > 0
        g = dt * -torch.exp(self.A_log.to(ct))[:, None]  # (B, H, T): log a_t = dt * A <= 0
        xh = xs.view(Bsz, T, H, P).transpose(1, 2)  # (B, H, T, P)
        k = Bm[:, None].expand(Bsz, H, T, N)  # ngroups = 1: one B and C for all heads
        q = Cm[:, None].expand(Bsz, H, T, N)
        y, h = kernel(q, k, xh * dt[..., None].to(xh.dtype), g, state=None if state is None else state.ssm)
        y = y + self.D[:, None, None] * xh  # (B, H, T, P)
        y = y.transpose(1, 2).reshape(Bsz, T, Dn) * F.silu(z)  # gate, then RMSNorm (norm_before_gate=False)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5) * self.norm_weight
        return self.out_proj(y), Mamba2State(tail, h)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Mamba2State | None = None):
        chunked = functools.partial(gated_linear_attention_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Mamba2State:
        conv = torch.zeros(batch_size, self.conv_dim, self.config.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.num_heads, self.d_state, self.head_dim, device=device,
                          dtype=compute_dtype(dtype))
        return Mamba2State(conv, ssm)

    def step(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        y, state = self._mix(x_t.unsqueeze(1), state, gated_linear_attention_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.d_state * self.head_dim + self.conv_dim * (self.config.d_conv - 1)
