"""Causal linear attention (Katharopoulos et al. 2020; Based, Arora et al. 2024, arXiv 2402.18668).

State update with a feature map phi: S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t) (the division only with ``normalize``). Queries and keys are
projected to ``feature_dim`` per head before phi; the state per layer holds
H * F * (d_v + normalize) numbers, with F = feature width after phi (273 for Taylor with d = 16)
and d_v = d_model / H. Training and prefill use the chunked kernel of ``recallkit.ops``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.feature_maps import FEATURE_MAPS, POSITIVE_FEATURE_MAPS, feature_dim
from recallkit.ops.linear_attention import (
    init_linear_state,
    linear_attention_chunked,
    linear_attention_recurrent,
)


class LinearAttentionConfig(MixerConfig):
    """Multi-head causal linear attention with a feature map."""

    name: Literal["linear_attention"] = "linear_attention"
    feature_map: Literal["identity", "elu", "relu", "taylor"] = "taylor"
    feature_dim: int = Field(default=16, gt=0, description="query/key width per head before phi")
    num_heads: int = Field(default=1, gt=0)
    normalize: bool = True
    chunk_size: int = Field(default=64, gt=0)

    @model_validator(mode="after")
    def _check_normalisable(self) -> LinearAttentionConfig:
        if self.normalize and self.feature_map not in POSITIVE_FEATURE_MAPS:
            raise ValueError(
                f"feature_map={self.feature_map!r} can make phi(q).phi(k) <= 0, so it cannot be "
                "normalised; set normalize=False"
            )
        return self

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)

    def describe(self) -> str:
        return f"linear_attention({self.feature_map})"


class LinearAttention(Mixer):
    """Causal linear attention; its state is S (B, H, F, d_v + normalize), z as the last column."""

    Config = LinearAttentionConfig

    def __init__(self, d_model: int, config: LinearAttentionConfig) -> None:
        super().__init__(d_model, config)
        self.num_heads = config.num_heads
        self.value_dim = d_model // config.num_heads
        self.phi = FEATURE_MAPS[config.feature_map]
        self.feature_width = feature_dim(config.feature_map, config.feature_dim)
        self.qk = nn.Linear(d_model, 2 * config.num_heads * config.feature_dim)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        H, f = self.num_heads, self.config.feature_dim
        q, k = self.qk(x).view(B, T, 2, H, f).permute(2, 0, 3, 1, 4)  # each (B, H, T, f)
        v = self.v(x).view(B, T, H, self.value_dim).transpose(1, 2)  # (B, H, T, d_v)
        return self.phi(q), self.phi(k), v

    def _merge(self, y: Tensor) -> Tensor:
        return self.out(merge_heads(y))

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        q, k, v = self._project(x)
        y, state = linear_attention_chunked(
            q, k, v, state=state, normalize=self.config.normalize, chunk_size=self.config.chunk_size
        )
        return self._merge(y), state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        shape_q = torch.empty(batch_size, self.num_heads, 0, self.feature_width, device=device, dtype=dtype)
        shape_v = torch.empty(batch_size, self.num_heads, 0, self.value_dim, device=device, dtype=dtype)
        return init_linear_state(shape_q, shape_v, self.config.normalize)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        q, k, v = self._project(x_t.unsqueeze(1))  # (B, H, 1, .)
        y, state = linear_attention_recurrent(q, k, v, state=state, normalize=self.config.normalize)
        return self._merge(y).squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.feature_width * (self.value_dim + int(self.config.normalize))
