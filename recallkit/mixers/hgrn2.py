"""HGRN2 (Qin, Yang, Sun, Shen, Li, Sun, Zhong 2024, "HGRN2: Gated Linear RNNs with State Expansion",
arXiv 2404.07904, section 3).

HGRN's element-wise gated linear recurrence with its input expanded by an outer product with the
complement of the forget gate, per head of n = ``expand_ratio`` channels:
S_t = Diag(f_t) S_{t-1} + (1 - f_t) i_t^T and y_t = S_t^T o_t, with the forget gate
f_t = beta + (1 - beta) sigmoid(x_t W_f) in (beta, 1)^n (HGRN's lower bound beta), the input
i_t = SiLU(x_t W_i) and the output gate o_t = sigmoid(x_t W_o). Read as linear attention it is GLA
with query o_t, key 1 - f_t, value i_t and log-decay log f_t, so training and prefill use recallkit's
chunked vector-gate linear attention (``gated_linear_attention_chunked``) and ``step`` its token loop:
no new kernel. The block, as in the authors' released HGRU2 (hgru2-pytorch ``Hgru2_1d``, which the
gates above follow): one input projection with bias to i, o, f, the recurrence with no 1 / sqrt(n)
scale, LayerNorm over the d channels, the output projection with bias. (fla's ``HGRN2Attention``
differs: SiLU query, no activation on i, RMSNorm, no biases.)
H = d_model / n heads, each state n x n; the state per layer is S (H, n, n):
H * n^2 = d_model * expand_ratio numbers (plus d_model * (K - 1) for the tails of a ``short_conv`` of
K taps, counted by its wrapper).

Deviations from the paper:
- HGRN's lower bound is learnt across the layers (beta^l = cumsum(softmax(Gamma))_l, 0 in the first
  layer); a mixer does not know its layer, so here it is the fixed ``lower_bound`` (default 0, the
  first layer's), one value for every channel; a model lists increasing values per layer to
  reproduce the hierarchy;
- the paper's models use expand_ratio 128; the default here is 16, for widths of 16 to 64;
- the HGRN2 block's GLU channel mixer is recallkit's ``ModelConfig.mlp`` option, not this mixer.
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
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.gated_linear_attention import (
    gated_linear_attention_chunked,
    gated_linear_attention_recurrent,
)
from recallkit.ops.numerics import compute_dtype


class HGRN2Config(MixerConfig):
    """HGRN2: forget-gated linear RNN with the outer-product state expansion, LayerNorm."""

    name: Literal["hgrn2"] = "hgrn2"
    expand_ratio: int = Field(default=16, gt=0, description="n, the head size: d_model / n heads of n x n")
    lower_bound: float = Field(default=0.0, ge=0, lt=1, description="beta: forget gates lie in (beta, 1)")
    chunk_size: int = Field(default=32, gt=0, description="C of the chunked vector-gate kernel (32 took "
                            "0.57-0.80x the time of 64 over training steps, docs/results.md)")

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.expand_ratio, "expand_ratio")


class HGRN2(Mixer):
    """HGRN2 mixer; its state is S (B, H, n, n) in float32."""

    Config = HGRN2Config

    def __init__(self, d_model: int, config: HGRN2Config) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        self.head_dim = config.expand_ratio  # n
        self.num_heads = d_model // self.head_dim  # H
        self.in_proj = nn.Linear(d_model, 3 * d_model)  # W_i, W_o, W_f with their biases
        self.norm = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_model)

    def _gates(self, f_pre: Tensor) -> tuple[Tensor, Tensor]:
        """log f_t and the key 1 - f_t for f_t = beta + (1 - beta) sigmoid(f_pre), float32+."""
        beta = self.config.lower_bound
        key = (1 - beta) * torch.sigmoid(-f_pre)  # 1 - f_t without the cancellation of 1 - f_t
        if beta == 0:
            return F.logsigmoid(f_pre), key
        floor = torch.full_like(f_pre, math.log(beta))
        return torch.logaddexp(floor, math.log1p(-beta) + F.logsigmoid(f_pre)), key  # log(beta + (1-beta) s)

    def _mix(self, x: Tensor, state: Tensor | None, kernel) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a gated-linear-attention
        form."""
        B, T, D = x.shape
        i_pre, o_pre, f_pre = self.in_proj(x).chunk(3, dim=-1)  # each (B, T, D)
        log_f, key = self._gates(f_pre.to(compute_dtype(x)))

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, n)

        # GLA with q = o_t, k = 1 - f_t, v = i_t, g = log f_t: S_t = Diag(f_t) S_{t-1} + (1 - f_t) i_t^T
        y, state = kernel(heads(torch.sigmoid(o_pre)), heads(key), heads(F.silu(i_pre)), heads(log_f),
                          state=state)
        return self.out(self.norm(merge_heads(y))), state

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        chunked = functools.partial(gated_linear_attention_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        shape = (batch_size, self.num_heads, self.head_dim, self.head_dim)
        return torch.zeros(shape, device=device, dtype=compute_dtype(dtype))

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self._mix(x_t.unsqueeze(1), state, gated_linear_attention_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * self.head_dim  # = d_model * expand_ratio
