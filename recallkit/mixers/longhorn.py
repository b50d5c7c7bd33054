"""Longhorn (Liu, Wang, Wu, Feng, Stone & Liu 2024, "Longhorn: State Space Models are Amortized Online
Learners", arXiv 2407.14207, section 3).

Mamba's block with its selective SSM replaced by the closed-form online-learning update. Per inner
channel d of the convolved input x_t, with key k_t (Mamba's B projection, N = d_state numbers) and
query q_t (Mamba's C): Δ_t = β_t / (1 + β_t k_t^T k_t), β_t = sigmoid(W_β x_t + b_β) per channel,
S_t = S_{t-1} ⊙ (1 - Δ_t ⊗ k_t^2) + (Δ_t ⊙ x_t) ⊗ k_t, y_t = S_t q_t + D ⊙ x_t: the implicit step of
the online regression of x_t on k_t, with k k^T kept on its diagonal. There is no A parameter and no
separate dt or forget gate: the key sets how much each state forgets. The block, as in the paper and
its released code (``models/longhorn.py``): in_proj to x and a gate z (d_inner = expand * d_model
each), a depthwise causal conv of d_conv taps + SiLU on x, x_proj to (dt_rank, k, q), β = sigmoid of
a rank-dt_rank projection to d_inner channels (the released code's ``dt_head``, its bias zero at
init as there), the update, y * SiLU(z), out_proj. The state per layer is the conv tail
(d_inner, d_conv - 1) plus S (d_inner, N): d_inner * (d_conv - 1 + N) numbers, as Mamba's.
Training and prefill use the chunked Longhorn scan of ``recallkit.ops``.

Deviations from the paper and its released code:
- weight init: the released code's model-level init (out_proj rescaled by 1 / sqrt(n_layer), every
  other bias zeroed) is not applied; the projections keep nn.Linear's defaults, as recallkit's
  ``mamba``; only the beta bias is zeroed, as there;
- the recurrent state is float32 (float64 for float64 inputs), as every recallkit state; the released
  code keeps it in the model dtype at decoding;
- the released code's fused CUDA scan is replaced by the pure-PyTorch chunked scan of
  ``recallkit.ops.longhorn`` (the same update, equal to the token loop to rounding).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.mixers.mamba import MambaState
from recallkit.ops.longhorn import longhorn_chunked, longhorn_recurrent
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.short_conv import short_conv


class LonghornConfig(MixerConfig):
    """Longhorn block: Mamba's gated, convolved block around the online-learning update."""

    name: Literal["longhorn"] = "longhorn"
    d_state: int = Field(default=16, gt=0, description="N, states per inner channel (key / query size)")
    d_conv: int = Field(default=4, gt=0, description="taps of the internal depthwise causal conv")
    expand: int = Field(default=2, gt=0, description="d_inner = expand * d_model")
    dt_rank: Literal["auto"] | PositiveInt = Field(default="auto",
                                                   description='rank of the beta projection; "auto" = '
                                                               'ceil(d_model / 16)')
    chunk_size: int = Field(default=64, gt=0)

    def inner_dim(self, d_model: int) -> int:
        return self.expand * d_model

    def rank(self, d_model: int) -> int:
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else self.dt_rank

    def describe(self) -> str:
        return f"longhorn(d_state={self.d_state})"


class Longhorn(Mixer):
    """Longhorn mixer; its state is Mamba's (conv tail, S (B, d_inner, N) in float32)."""

    Config = LonghornConfig

    def __init__(self, d_model: int, config: LonghornConfig) -> None:
        super().__init__(d_model, config)
        Dn, N, K, R = config.inner_dim(d_model), config.d_state, config.d_conv, config.rank(d_model)
        self.d_inner, self.d_state, self.dt_rank = Dn, N, R
        self.in_proj = nn.Linear(d_model, 2 * Dn, bias=False)
        bound = K**-0.5  # like nn.Conv1d with groups = channels: U(-1/sqrt(K), 1/sqrt(K))
        self.conv_weight = nn.Parameter(torch.empty(Dn, K).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(Dn).uniform_(-bound, bound))
        self.x_proj = nn.Linear(Dn, R + 2 * N, bias=False)
        self.beta_proj = nn.Linear(R, Dn)  # the released code's dt_head
        nn.init.zeros_(self.beta_proj.bias)  # zeroed at init there: beta starts near sigmoid(0) = 1/2
        self.D = nn.Parameter(torch.ones(Dn))
        self.D._no_weight_decay = True  # as Mamba's; recallkit.training honours it
        self.out_proj = nn.Linear(Dn, d_model, bias=False)

    def _mix(self, x: Tensor, state: MambaState | None, scan) -> tuple[Tensor, MambaState]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``scan`` a Longhorn-scan form."""
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, Dn) each
        xc, tail = short_conv(xi, self.conv_weight, self.conv_bias,
                              state=None if state is None else state.conv)
        xc = F.silu(xc)
        low, k, q = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        beta = torch.sigmoid(self.beta_proj(low).to(compute_dtype(x)))  # (B, T, Dn), in (0, 1)
        y, S = scan(xc, beta, k, q, self.D, state=None if state is None else state.ssm)
        return self.out_proj(y * F.silu(z)), MambaState(tail, S)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: MambaState | None = None):
        chunked = functools.partial(longhorn_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        conv = torch.zeros(batch_size, self.d_inner, self.config.d_conv - 1, device=device, dtype=dtype)
        S = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=compute_dtype(dtype))
        return MambaState(conv, S)

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        y, state = self._mix(x_t.unsqueeze(1), state, longhorn_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.config.d_conv - 1) + self.d_inner * self.d_state
