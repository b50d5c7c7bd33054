"""Softmax attention (Vaswani et al. 2017) with GQA/MQA, sliding windows and positional schemes.

State update: the KV cache grows by one row per token, K_t = [K_{t-1}; k_t], V_t = [V_{t-1}; v_t],
and y_t = softmax(q_t K_t^T / sqrt(d_h) + b_t) V_t. Grouped-query attention (Ainslie et al. 2023)
shares each of H_kv key/value heads among H / H_kv query heads (H_kv = 1 is MQA, Shazeer 2019).
A sliding window w keeps only the last w rows (Mistral's rolling cache); ``step`` also accepts an
evicting ``recallkit.inference.KVCache`` in place of its state. Positions: ``nope``
(none), ``rope`` (rotary q and k), ``alibi`` (b = -m_h (t - j)) and ``hard_alibi`` (some heads
see only their last h + 1 tokens, the rest NoPE; see ``recallkit.ops.position_bias``).
The state after T tokens holds 2 * H_kv * d_h * min(w, T) numbers per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from recallkit.config import MixerConfig
from recallkit.inference.cache import KVCache
from recallkit.mixers.base import Mixer
from recallkit.ops.position_bias import alibi_slopes, attention_bias, hard_alibi_spans
from recallkit.ops.rotary import apply_rotary, rotate_at


class AttentionConfig(MixerConfig):
    """Multi-head causal softmax attention."""

    name: Literal["attention"] = "attention"
    num_heads: int = Field(default=1, gt=0)
    num_kv_heads: int | None = Field(default=None, gt=0, description="None = num_heads (MHA); 1 = MQA")
    position: Literal["nope", "rope", "alibi", "hard_alibi"] = "nope"
    rope_base: float = Field(default=10_000.0, gt=0)
    window: int | None = Field(default=None, gt=0, description="sliding window incl. the query; None = all")
    hard_alibi_heads: int | None = Field(default=None, ge=0, description="hard heads; None = num_heads // 2")

    @model_validator(mode="after")
    def _check_heads(self) -> AttentionConfig:
        if self.num_heads % self.kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.kv_heads}")
        if self.hard_alibi_heads is not None and self.position != "hard_alibi":
            raise ValueError("hard_alibi_heads is only used with position='hard_alibi'")
        if self.position == "hard_alibi" and not 0 < self.hard_heads <= self.num_heads:
            raise ValueError(
                f"hard_alibi needs 1..num_heads hard heads; got {self.hard_heads} of {self.num_heads} "
                "(set num_heads >= 2 or hard_alibi_heads)"
            )
        return self

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def hard_heads(self) -> int:
        return self.num_heads // 2 if self.hard_alibi_heads is None else self.hard_alibi_heads

    def check_width(self, d_model: int) -> None:
        if d_model % self.num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by attention num_heads={self.num_heads}")
        if self.position == "rope" and (d_model // self.num_heads) % 2:
            raise ValueError(f"RoPE needs an even head dim; got d_model/num_heads = {d_model // self.num_heads}")

    def describe(self) -> str:
        parts = [] if self.position == "nope" else [self.position]
        if self.kv_heads != self.num_heads:
            parts.append("mqa" if self.kv_heads == 1 else f"gqa{self.kv_heads}")
        if self.window is not None:
            parts.append(f"window {self.window}")
        return f"attention({', '.join(parts)})" if parts else "attention"


@dataclass
class AttentionState:
    """KV cache of one layer: the last min(window, seen) keys and values."""

    key: Tensor  # (B, H_kv, S, d_h)
    value: Tensor  # (B, H_kv, S, d_h)
    seen: int  # tokens processed so far (not state: a position counter)


class Attention(Mixer):
    """Causal multi-head softmax attention with a KV cache as its recurrent state."""

    Config = AttentionConfig

    def __init__(self, d_model: int, config: AttentionConfig) -> None:
        super().__init__(d_model, config)
        self.num_heads, self.num_kv_heads = config.num_heads, config.kv_heads
        self.head_dim = d_model // config.num_heads
        self.qkv = nn.Linear(d_model, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim)
        self.out = nn.Linear(d_model, d_model)
        slopes = alibi_slopes(self.num_heads) if config.position == "alibi" else None
        spans = hard_alibi_spans(self.num_heads, config.hard_heads) if config.position == "hard_alibi" else None
        self.slopes, self.spans = slopes, spans

    def _project(self, x: Tensor, start: int) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, self.num_heads + 2 * self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)  # (B, H|H_kv, T, d_h)
        if self.config.position == "rope":
            q, k = (apply_rotary(t, start, self.config.rope_base) for t in (q, k))
        return q, k, v

    def _merge(self, y: Tensor) -> Tensor:
        B, H, T, Dh = y.shape
        return self.out(y.transpose(1, 2).reshape(B, T, H * Dh))

    def forward(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        return self.prefill(x)[0]

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> AttentionState:
        empty = torch.zeros(batch_size, self.num_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return AttentionState(empty, empty.clone(), 0)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: AttentionState | None = None):
        past = 0 if state is None else state.seen
        T = x.shape[1]
        q, k, v = self._project(x, start=past)
        if state is not None and state.key.shape[2]:
            k, v = torch.cat([state.key, k], dim=2), torch.cat([state.value, v], dim=2)
        gqa = self.num_kv_heads != self.num_heads
        plain = self.config.position in ("nope", "rope") and self.config.window is None
        if plain and k.shape[2] == T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            query_pos = torch.arange(past, past + T, device=x.device)
            key_pos = torch.arange(past + T - k.shape[2], past + T, device=x.device)
            bias = attention_bias(query_pos, key_pos, window=self.config.window, slopes=self.slopes, spans=self.spans)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), enable_gqa=gqa)
        if self.config.window is not None:
            k, v = k[:, :, -self.config.window :], v[:, :, -self.config.window :]
        return self._merge(y), AttentionState(k, v, past + T)

    def step(self, x_t: Tensor, state: AttentionState | KVCache) -> tuple[Tensor, AttentionState | KVCache]:
        if isinstance(state, KVCache):
            return self._evicting_step(x_t, state), state
        y, state = self.prefill(x_t.unsqueeze(1), state=state)
        return y.squeeze(1), state

    def _evicting_step(self, x_t: Tensor, cache: KVCache) -> Tensor:
        """One token (B, D) through an evicting cache (recallkit.inference): keys are cached before
        RoPE and rotated at the positions the cache reports (original, or re-indexed slots), the
        position biases use the same positions, and the cache sees the attention to rank tokens."""
        B, H, Hkv, d = x_t.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(x_t).view(B, H + 2 * Hkv, d).split([H, Hkv, Hkv], dim=1)
        cache.append(k, v)
        query_pos, key_pos = cache.attention_positions()  # (B, H_kv, 1), (B, H_kv, S)
        q = q.view(B, Hkv, H // Hkv, d)  # query heads grouped by the KV head they share
        keys = cache.key
        if self.config.position == "rope":
            q = rotate_at(q, query_pos, self.config.rope_base)
            keys = rotate_at(keys, key_pos, self.config.rope_base)
        scores = torch.einsum("bkgd,bksd->bkgs", q, keys) * d**-0.5  # (B, H_kv, G, S)
        distance = (query_pos - key_pos)[:, :, None, :]  # (B, H_kv, 1, S)
        allowed = torch.ones_like(distance, dtype=torch.bool)
        if self.config.window is not None:
            allowed = allowed & (distance < self.config.window)
        if self.spans is not None:
            allowed = allowed & (distance <= self.spans.to(x_t.device).view(1, Hkv, -1, 1))
        if self.slopes is not None:
            scores = scores - self.slopes.to(x_t.device).view(1, Hkv, -1, 1) * distance
        attention = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)  # (B, H_kv, G, S)
        y = torch.einsum("bkgs,bksd->bkgd", attention, cache.value)
        cache.observe(attention.mean(dim=2))
        return self.out(y.reshape(B, H * d))

    def kv_numbers_per_token(self) -> int:
        """Cache numbers one token adds (while the window is not full): 2 * H_kv * d_h."""
        return 2 * self.num_kv_heads * self.head_dim

    def state_size(self, seq_len: int) -> int:
        held = seq_len if self.config.window is None else min(self.config.window, seq_len)
        return self.kv_numbers_per_token() * held
