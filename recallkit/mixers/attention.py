"""Softmax attention (Vaswani et al. 2017), causal and multi-head.

State update: the KV cache grows by one row per token, K_t = [K_{t-1}; k_t], V_t = [V_{t-1}; v_t],
and y_t = softmax(q_t K_t^T / sqrt(d_h)) V_t, with optional RoPE on q and k. The parallel form is torch's SDPA; the state after
T tokens holds 2 * H * d_h * T numbers per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.rotary import apply_rotary


class AttentionConfig(MixerConfig):
    """Multi-head causal softmax attention."""

    name: Literal["attention"] = "attention"
    num_heads: int = Field(default=1, gt=0)
    rope_base: float | None = Field(default=None, gt=0, description="RoPE on q and k; None = no RoPE")

    def check_width(self, d_model: int) -> None:
        if d_model % self.num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by attention num_heads={self.num_heads}")
        if self.rope_base is not None and (d_model // self.num_heads) % 2:
            raise ValueError(f"RoPE needs an even head dim; got d_model/num_heads = {d_model // self.num_heads}")

    def describe(self) -> str:
        return "attention" if self.rope_base is None else "attention(rope)"


@dataclass
class AttentionState:
    """KV cache of one layer."""

    key: Tensor  # (B, H, T, d_h)
    value: Tensor  # (B, H, T, d_h)


class Attention(Mixer):
    """Causal multi-head softmax attention with a KV cache as its recurrent state."""

    Config = AttentionConfig

    def __init__(self, d_model: int, config: AttentionConfig) -> None:
        super().__init__(d_model, config)
        self.num_heads = config.num_heads
        self.head_dim = d_model // config.num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _project(self, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d_h)
        if self.config.rope_base is not None:
            q, k = (apply_rotary(t, start, self.config.rope_base) for t in (q, k))
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        B, H, T, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * Dh))

    def forward(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        return self.prefill(x)[0]

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> AttentionState:
        empty = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, device=device, dtype=dtype)
        return AttentionState(empty, empty.clone())

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: AttentionState | None = None):
        past = 0 if state is None else state.key.shape[2]
        q, k, v = self._project(x, start=past)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self._merge(y), AttentionState(k, v)
        keys = torch.cat([state.key, k], dim=2)
        values = torch.cat([state.value, v], dim=2)
        T = x.shape[1]
        # query i (at absolute position past + i) sees keys 0 .. past + i
        visible = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        return self._merge(y), AttentionState(keys, values)

    def step(self, x_t: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        y, state = self.prefill(x_t.unsqueeze(1), state=state)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return 2 * self.num_heads * self.head_dim * seq_len
