"""Softmax attention (Vaswani et al. 2017) with GQA/MQA, sliding windows and positional schemes.

State update: the KV cache grows by one row per token, K_t = [K_{t-1}; k_t], V_t = [V_{t-1}; v_t],
and y_t = softmax(q_t K_t^T / sqrt(d_h) + b_t) V_t. Grouped-query attention (Ainslie et al. 2023)
shares each of H_kv key/value heads among H / H_kv query heads (H_kv = 1 is MQA, Shazeer 2019).
A sliding window w (the query and the w - 1 tokens before it) keeps only the last w - 1 rows between
steps, as transformers' sliding-window caches do: the token w back is masked from the next query
on, so holding it would cost memory no query reads. The state is any cache of
the protocol in ``recallkit.kv.protocol``: the plain one here, or an evicting ``recallkit.kv.KVCache``
that ``init_state(..., cache=...)`` builds instead (given the window as its ``reach``, so it never
holds or counts a token the window masks).
Positions: ``nope`` (none), ``rope`` (rotary q and k), ``alibi`` (b = -m_h (t - j)) and ``hard_alibi``
(some heads see only their last h + 1 tokens, the rest NoPE; see ``recallkit.ops.position_bias``).
The state after T tokens holds 2 * H_kv * d_h * min(w - 1, T) numbers per layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.kv.cache import KVCache
from recallkit.kv.protocol import KVState, LayerCache
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.position_bias import alibi_slopes, attention_bias, hard_alibi_spans
from recallkit.ops.rotary import apply_rotary, rotate_at
from recallkit.ops.sdpa import sdpa


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
        self._require_divisible(d_model, self.num_heads)
        if self.position == "rope" and (d_model // self.num_heads) % 2:
            raise ValueError(f"RoPE needs an even head dim; "
                             f"got d_model/num_heads = {d_model // self.num_heads}")

    def describe(self) -> str:
        parts = [] if self.position == "nope" else [self.position]
        if self.kv_heads != self.num_heads:
            parts.append("mqa" if self.kv_heads == 1 else f"gqa{self.kv_heads}")
        if self.window is not None:
            parts.append(f"window {self.window}")
        return f"attention({', '.join(parts)})" if parts else "attention"


@dataclass
class AttentionState:
    """The plain KV cache of one layer (the :mod:`recallkit.kv.protocol` cache that never evicts
    by policy): the last min(window - 1, seen) keys, rotated at their positions, and values: the
    tokens the next query can read besides itself (a window counts the query)."""

    key: Tensor  # (B, H_kv, S, d_h)
    value: Tensor  # (B, H_kv, S, d_h)
    seen: int  # tokens processed so far (not state: a position counter)
    window: int | None = None  # keep only the last ``window - 1`` tokens

    needs_attention: ClassVar[bool] = False
    stepwise: ClassVar[bool] = False

    @property
    def next_position(self) -> int:
        return self.seen

    @property
    def key_positions(self) -> Tensor:  # (S,)
        return torch.arange(self.seen - self.key.shape[2], self.seen, device=self.key.device)

    def append(self, key: Tensor, value: Tensor) -> AttentionState:
        key, value = torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2)
        return AttentionState(key, value, self.seen + key.shape[2] - self.key.shape[2], self.window)

    def observe(self, attention: Tensor | None) -> AttentionState:
        if self.window is None or self.key.shape[2] < self.window:
            return self
        start = self.key.shape[2] - (self.window - 1)  # the oldest key the next query reads
        key, value = self.key[:, :, start:], self.value[:, :, start:]
        return AttentionState(key, value, self.seen, self.window)


class Attention(Mixer):
    """Causal multi-head softmax attention with a KV cache as its recurrent state."""

    Config = AttentionConfig
    kv_cache = True

    def __init__(self, d_model: int, config: AttentionConfig) -> None:
        super().__init__(d_model, config)
        self.num_heads, self.num_kv_heads = config.num_heads, config.kv_heads
        self.head_dim = d_model // config.num_heads
        self.qkv = nn.Linear(d_model, (self.num_heads + 2 * self.num_kv_heads) * self.head_dim)
        self.out = nn.Linear(d_model, d_model)
        slopes = alibi_slopes(self.num_heads) if config.position == "alibi" else None
        spans = (hard_alibi_spans(self.num_heads, config.hard_heads)
                 if config.position == "hard_alibi" else None)
        self.slopes, self.spans = slopes, spans

    def _rotate(self, x: Tensor, shift: Tensor) -> Tensor:
        """RoPE by ``shift`` positions: (..., S, d_h) rotated by (..., S)."""
        return rotate_at(x, shift, self.config.rope_base)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype, *,
                   cache: LayerCache | None = None) -> KVState:
        if cache is not None:
            kv = cache(self._rotate if self.config.position == "rope" else None)
            if isinstance(kv, KVCache):  # hold the window's tokens at most, as the plain state does
                kv.reach = None if self.config.window is None else self.config.window - 1
            return kv
        empty = torch.zeros(batch_size, self.num_kv_heads, 0, self.head_dim, device=device, dtype=dtype)
        return AttentionState(empty, empty.clone(), 0, self.config.window)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: KVState | None = None):
        B, T, _ = x.shape
        state = self.init_state(B, x.device, x.dtype) if state is None else state
        if state.stepwise and T > 1:  # a cache that evicts after every token reads one at a time
            outputs = []
            for t in range(T):
                y, state = self.prefill(x[:, t : t + 1], state=state)
                outputs.append(y)
            return torch.cat(outputs, dim=1), state
        qkv = self.qkv(x).view(B, T, self.num_heads + 2 * self.num_kv_heads, self.head_dim).transpose(1, 2)
        # (B, H|H_kv, T, d_h)
        q, k, v = qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)
        start = state.next_position
        if self.config.position == "rope":
            q, k = (apply_rotary(t, start, self.config.rope_base) for t in (q, k))
        state = state.append(k, v)
        query_pos = torch.arange(start, start + T, device=x.device)
        y, attention = self._attend(q, state, query_pos)
        state = state.observe(attention)
        return self.out(merge_heads(y)), state

    def _attend(self, q: Tensor, state: KVState, query_pos: Tensor) -> tuple[Tensor, Tensor | None]:
        """q (B, H, T, d_h) against the cache: (y (B, H, T, d_h), attention (B, H_kv, T, S) averaged
        over each KV head's query heads, or None when the cache does not ask for it)."""
        key_pos = state.key_positions  # (S,) or (B, H_kv, S)
        if key_pos.ndim == 3:  # per-head positions: one query head per row of the bias
            key_pos = key_pos.repeat_interleave(self.num_heads // self.num_kv_heads, dim=1)
        plain = self.config.position in ("nope", "rope") and self.config.window is None
        bias = None
        if not (plain and key_pos.ndim == 1 and key_pos.shape[0] == q.shape[2]):
            bias = attention_bias(query_pos, key_pos, window=self.config.window, slopes=self.slopes,
                                  spans=self.spans).to(q.dtype)  # (T, S), (H, T, S) or (B, H, T, S)
        gqa = self.num_kv_heads != self.num_heads
        if not state.needs_attention:
            y = sdpa(q, state.key, state.value, attn_mask=bias, is_causal=bias is None, enable_gqa=gqa)
            return y, None
        group = self.num_heads // self.num_kv_heads
        keys, values = (t.repeat_interleave(group, dim=1) for t in (state.key, state.value))  # (B, H, S, d_h)
        scores = q @ keys.transpose(-1, -2) * self.head_dim**-0.5  # (B, H, T, S)
        if bias is not None:
            scores = scores + bias
        else:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        attention = scores.softmax(dim=-1)
        B, H, T, S = attention.shape
        return attention @ values, attention.view(B, self.num_kv_heads, group, T, S).mean(dim=2)

    def step(self, x_t: Tensor, state: KVState) -> tuple[Tensor, KVState]:
        y, state = self.prefill(x_t.unsqueeze(1), state=state)
        return y.squeeze(1), state

    def kv_numbers_per_token(self) -> int:
        """Cache numbers one token adds (while the window is not full): 2 * H_kv * d_h."""
        return 2 * self.num_kv_heads * self.head_dim

    def state_size(self, seq_len: int) -> int:
        held = seq_len if self.config.window is None else min(self.config.window - 1, seq_len)
        return self.kv_numbers_per_token() * held
