"""GLA (Yang et al. 2023, "Gated Linear Attention Transformers with Hardware-Efficient Training",
arXiv 2312.06635).

Per head, with a data-dependent decay per key channel alpha_t in (0, 1)^{d_k}:
S_t = diag(alpha_t) S_{t-1} + k_t^T v_t, o_t = q_t S_t, where
alpha_t = sigmoid(x_t W_1 W_2 + b)^(1/tau), i.e. log alpha_t = logsigmoid(x_t W_1 W_2 + b) / tau,
with a rank-16 W_1 W_2 and tau = 16. Keys and queries have d_model * expand_k channels (0.5 in the
paper), values d_model; the output is (swish(x W_r + b_r) ⊙ GroupNorm_h(o)) W_O. The state per layer
is S (H, d_k, d_v): H * (expand_k * d_model / H) * (d_model / H) numbers.
Training and prefill use the chunked vector-gate kernel of ``recallkit.ops``.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.gated_linear_attention import (
    gated_linear_attention_chunked,
    gated_linear_attention_recurrent,
)
from recallkit.ops.numerics import compute_dtype


class GLAConfig(MixerConfig):
    """Gated linear attention: low-rank data-dependent per-channel decays, GroupNorm, swish gate."""

    name: Literal["gla"] = "gla"
    num_heads: int = Field(default=4, gt=0)
    expand_k: float = Field(default=0.5, gt=0, le=8, description="query/key width = expand_k * d_model")
    gate_rank: int = Field(default=16, gt=0, description="rank of the decay projection W_1 W_2")
    gate_temperature: float = Field(default=16.0, gt=0, le=1024,  # the init's softplus^-1(tau / 16) overflows
                                    description="tau in log alpha = logsigmoid(.) / tau")
    chunk_size: int = Field(default=64, gt=0)

    def key_dim(self, d_model: int) -> int:
        """Total query/key width over all heads."""
        return round(d_model * self.expand_k)

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)
        key = d_model * self.expand_k
        if key != round(key) or round(key) % self.num_heads or key < self.num_heads:
            raise ValueError(
                f"gla expand_k={self.expand_k} gives a key width of {key} for d_model={d_model}, "
                f"not a positive multiple of num_heads={self.num_heads}"
            )

    def describe(self) -> str:
        return "gla"


class GLA(Mixer):
    """Gated linear attention; its state is S (B, H, d_k, d_v) in float32."""

    Config = GLAConfig

    def __init__(self, d_model: int, config: GLAConfig) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        H = self.num_heads = config.num_heads
        Kt = config.key_dim(d_model)
        self.key_dim, self.value_dim = Kt // H, d_model // H
        self.qk = nn.Linear(d_model, 2 * Kt, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.gate_down = nn.Linear(d_model, config.gate_rank, bias=False)  # W_1
        self.gate_up = nn.Linear(config.gate_rank, Kt)  # W_2 and b
        # Bias init (our choice; the paper leaves it open): per-channel decays at init spread
        # log-uniformly over exp(-1/16) .. exp(-1/512) per step, i.e. softplus(-b) / tau in
        # [1/512, 1/16], so channels start with memories from ~16 to ~512 tokens.
        rate = torch.empty(Kt).uniform_(math.log(1 / 512), math.log(1 / 16)).exp() * config.gate_temperature
        with torch.no_grad():
            self.gate_up.bias.copy_(-torch.log(torch.expm1(rate)))  # b = -softplus^{-1}(rate)
        self.out_gate = nn.Linear(d_model, d_model)  # W_r, b_r
        self.norm = nn.GroupNorm(H, d_model)  # one group per head
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _mix(self, x: Tensor, state: Tensor | None, kernel) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a gated-linear-attention
        form."""
        B, T, D = x.shape
        H, dk, dv = self.num_heads, self.key_dim, self.value_dim
        q, k = self.qk(x).view(B, T, 2, H, dk).permute(2, 0, 3, 1, 4)  # each (B, H, T, d_k)
        v = self.v(x).view(B, T, H, dv).transpose(1, 2)  # (B, H, T, d_v)
        logits = self.gate_up(self.gate_down(x)).to(compute_dtype(x))  # promoted: float64 stays float64
        g = (F.logsigmoid(logits) / self.config.gate_temperature).view(B, T, H, dk).transpose(1, 2)  # <= 0
        o, state = kernel(q / math.sqrt(dk), k, v, g, state=state)
        o = self.norm(o.transpose(1, 2).reshape(B * T, D)).view(B, T, D)  # GroupNorm_h per token
        return self.out(F.silu(self.out_gate(x)) * o), state

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        chunked = functools.partial(gated_linear_attention_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        shape = (batch_size, self.num_heads, self.key_dim, self.value_dim)
        return torch.zeros(shape, device=device, dtype=compute_dtype(dtype))

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self._mix(x_t.unsqueeze(1), state, gated_linear_attention_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.key_dim * self.value_dim
