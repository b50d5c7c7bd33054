"""RetNet (Sun et al. 2023, "Retentive Network: A Successor to Transformer for Large Language Models",
arXiv 2307.08621).

Multi-scale retention, per head h with a fixed decay gamma_h = 1 - 2^(-5-h):
S_t = gamma_h S_{t-1} + k_t^T v_t, o_t = q_t S_t (the paper's recurrent form, eq. 6). The heads are
group-normalised and gated: Y = GroupNorm_h(o), MSR(X) = (swish(X W_G) ⊙ Y) W_O. The xPos rotation
and the paper's score normalisations (D divided by its row sums, scores by max(|sum|, 1)) are left
out: the per-head GroupNorm is scale invariant, so they only change numerics, not the function class
(the 1/sqrt(d) key scale is kept). The state per layer is S (H, d_h, d_h): H * d_h^2 = d_model^2 / H
numbers, d_h = d_model / H. Training and prefill use the chunked scalar-gate kernel of ``recallkit.ops``.
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


class RetNetConfig(MixerConfig):
    """Multi-scale retention with fixed per-head decays, GroupNorm and a swish output gate."""

    name: Literal["retnet"] = "retnet"
    num_heads: int = Field(default=4, gt=0, description="head h decays by gamma_h = 1 - 2^(-5-h)")
    chunk_size: int = Field(default=64, gt=0)

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)

    def describe(self) -> str:
        return "retnet"


class RetNet(Mixer):
    """Multi-scale retention; its state is S (B, H, d_h, d_h) in float32."""

    Config = RetNetConfig

    def __init__(self, d_model: int, config: RetNetConfig) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        H = self.num_heads = config.num_heads
        self.head_dim = d_model // H
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.gate = nn.Linear(d_model, d_model, bias=False)
        self.norm = nn.GroupNorm(H, d_model)  # one group per head
        self.out = nn.Linear(d_model, d_model, bias=False)
        # log gamma_h, fixed (a buffer, not trained): gamma from 1 - 1/32 (~exp(-1/32)) up towards 1
        gamma = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float64))
        self.register_buffer("log_gamma", torch.log(gamma).float(), persistent=False)  # (H,)

    def _mix(self, x: Tensor, state: Tensor | None, kernel) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a gated-linear-attention
        form."""
        B, T, D = x.shape
        H, dh = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, d_h)
        g = self.log_gamma[None, :, None].expand(B, H, T)  # (B, H, T): scalar log-decay per head
        o, state = kernel(q, k / math.sqrt(dh), v, g, state=state)
        o = self.norm(o.transpose(1, 2).reshape(B * T, D)).view(B, T, D)  # GroupNorm_h per token
        return self.out(F.silu(self.gate(x)) * o), state

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        chunked = functools.partial(gated_linear_attention_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        H, dh = self.num_heads, self.head_dim
        return torch.zeros(batch_size, H, dh, dh, device=device, dtype=compute_dtype(dtype))

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self._mix(x_t.unsqueeze(1), state, gated_linear_attention_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * self.head_dim
