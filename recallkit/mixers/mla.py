"""Multi-head latent attention (MLA; DeepSeek-V2, arXiv 2405.04434).

Keys and values are decompressed from a per-token latent c_t = W_DKV x_t of size d_c:
k^C_t = W_UK c_t, v_t = W_UV c_t (H heads of d_h), plus one decoupled RoPE key k^R_t = RoPE(W_KR x_t)
of size d_R shared by all heads. Queries are q_t = [W_UQ c^Q_t ; RoPE(W_QR c^Q_t)] per head, with
c^Q_t = W_DQ x_t when ``q_latent_dim`` is set (else x_t itself). State update: the cache appends
(c_t, k^R_t), so it holds (d_c + d_R) * T numbers per layer instead of MHA's 2 * H * d_h * T;
y_t = softmax([q^C; q^R] [K^C; K^R]^T / sqrt(d_h + d_R)) V. ``rope_dim=0`` drops the RoPE part: NoPE MLA,
as Kimi Linear's MLA layers (arXiv 2510.26692), which leave position to the KDA layers.

Two deviations from DeepSeek-V2, kept for recallkit's attention convention and stored run ids: every
projection has a bias (the paper's maps have none), and the compressed latents c_t, c^Q_t are not
RMS-normalised (the paper adds RMSNorm after them for training stability at scale, section 3.1.2).
The cache is latents, not per-head keys and values, so the KV eviction policies do not apply
(``kv_cache`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.position_bias import attention_bias
from recallkit.ops.rotary import apply_rotary
from recallkit.ops.sdpa import sdpa


class MLAConfig(MixerConfig):
    """Multi-head latent attention with a decoupled RoPE key."""

    name: Literal["mla"] = "mla"
    num_heads: int = Field(default=1, gt=0)
    kv_latent_dim: int = Field(default=32, gt=0, description="d_c: cached latent per token")
    rope_dim: int = Field(default=8, ge=0, description="d_R: cached RoPE key per token (even); 0 = NoPE")
    q_latent_dim: int | None = Field(default=None, gt=0, description="d_c': query compression; None = none")
    rope_base: float = Field(default=10_000.0, gt=0)

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)
        if self.rope_dim % 2:
            raise ValueError(f"mla rope_dim must be even for RoPE; got {self.rope_dim}")

    def describe(self) -> str:
        return f"mla(d_c {self.kv_latent_dim}, d_R {self.rope_dim})"


@dataclass
class MLAState:
    """Latent KV cache of one layer."""

    latent: Tensor  # (B, S, d_c)
    rope_key: Tensor  # (B, S, d_R), rotated at its own position
    seen: int  # tokens processed so far (a position counter, not state)


class MLA(Mixer):
    """Causal multi-head latent attention; the cache holds latents, not per-head keys and values."""

    Config = MLAConfig

    def __init__(self, d_model: int, config: MLAConfig) -> None:
        super().__init__(d_model, config)
        H, d_c, d_r = config.num_heads, config.kv_latent_dim, config.rope_dim
        self.num_heads, self.head_dim, self.rope_dim = H, d_model // H, d_r
        self.kv_down = nn.Linear(d_model, d_c + d_r)  # [c_t ; pre-RoPE k^R_t]
        self.kv_up = nn.Linear(d_c, 2 * d_model)  # [k^C_t ; v_t], H heads each
        q_in = config.q_latent_dim or d_model
        self.q_down = nn.Linear(d_model, q_in) if config.q_latent_dim else nn.Identity()
        self.q_up = nn.Linear(q_in, H * (self.head_dim + d_r))
        self.out = nn.Linear(d_model, d_model)

    def _queries(self, x: Tensor, start: int) -> Tensor:
        B, T, _ = x.shape
        q = self.q_up(self.q_down(x)).view(B, T, self.num_heads, self.head_dim + self.rope_dim)
        q = q.transpose(1, 2)  # (B, H, T, d_h + d_R)
        q_content, q_rope = q.split([self.head_dim, self.rope_dim], dim=-1)
        return torch.cat([q_content, apply_rotary(q_rope, start, self.config.rope_base)], dim=-1)

    def _compress(self, x: Tensor, start: int) -> tuple[Tensor, Tensor]:
        latent, rope_key = self.kv_down(x).split([self.config.kv_latent_dim, self.rope_dim], dim=-1)
        rope_key = apply_rotary(rope_key.unsqueeze(1), start, self.config.rope_base).squeeze(1)
        return latent, rope_key  # (B, T, d_c), (B, T, d_R)

    def _keys_values(self, latent: Tensor, rope_key: Tensor) -> tuple[Tensor, Tensor]:
        B, S, _ = latent.shape
        k_content, v = self.kv_up(latent).view(B, S, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k_rope = rope_key.unsqueeze(1).expand(B, self.num_heads, S, self.rope_dim)
        return torch.cat([k_content, k_rope], dim=-1), v  # (B, H, S, d_h + d_R), (B, H, S, d_h)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MLAState:
        latent = torch.zeros(batch_size, 0, self.config.kv_latent_dim, device=device, dtype=dtype)
        rope_key = torch.zeros(batch_size, 0, self.rope_dim, device=device, dtype=dtype)
        return MLAState(latent, rope_key, 0)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: MLAState | None = None):
        past = 0 if state is None else state.seen
        T = x.shape[1]
        latent, rope_key = self._compress(x, past)
        if state is not None:
            latent = torch.cat([state.latent, latent], dim=1)
            rope_key = torch.cat([state.rope_key, rope_key], dim=1)
        k, v = self._keys_values(latent, rope_key)
        q = self._queries(x, past)
        if k.shape[2] == T:
            y = sdpa(q, k, v, is_causal=True)
        else:
            query_pos = torch.arange(past, past + T, device=x.device)
            key_pos = torch.arange(past + T - k.shape[2], past + T, device=x.device)
            y = sdpa(q, k, v, attn_mask=attention_bias(query_pos, key_pos).to(q.dtype))
        y = self.out(merge_heads(y))
        return y, MLAState(latent, rope_key, past + T)

    def step(self, x_t: Tensor, state: MLAState) -> tuple[Tensor, MLAState]:
        y, state = self.prefill(x_t.unsqueeze(1), state=state)
        return y.squeeze(1), state

    def kv_numbers_per_token(self) -> int:
        """Cache numbers one token adds: d_c + d_R."""
        return self.config.kv_latent_dim + self.rope_dim

    def state_size(self, seq_len: int) -> int:
        return self.kv_numbers_per_token() * seq_len
