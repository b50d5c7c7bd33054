"""Mamba: Linear-Time Sequence Modeling with Selective State Spaces (Gu & Dao, 2023, arXiv 2312.00752).

State update per inner channel d with N states (the selective scan of ``recallkit.ops``):
h_t = exp(dt_t A) ⊙ h_{t-1} + (dt_t x_t) B_t^T, y_t = h_t C_t + D ⊙ x_t, where dt_t, B_t, C_t are
projections of the input. The block: in_proj to x and a gate z (d_inner = expand * d_model each),
a depthwise causal conv of d_conv taps + SiLU on x, x_proj to (dt_rank, B, C), dt = softplus(dt_proj),
A = -exp(A_log), the scan, y * SiLU(z), out_proj. The state per layer is the conv tail
(d_inner, d_conv - 1) plus h (d_inner, N): d_inner * (d_conv - 1 + N) numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from recallkit.base_config import DtMax, DtMin, MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.selective_scan import selective_scan_chunked, selective_scan_recurrent
from recallkit.ops.short_conv import short_conv


class MambaConfig(MixerConfig):
    """Mamba-1 block: gated, convolved, selective SSM with a diagonal A per channel."""

    name: Literal["mamba"] = "mamba"
    d_state: int = Field(default=16, gt=0, description="N, states per inner channel")
    d_conv: int = Field(default=4, gt=0, description="taps of the internal depthwise causal conv")
    expand: int = Field(default=2, gt=0, description="d_inner = expand * d_model")
    dt_rank: Literal["auto"] | PositiveInt = Field(default="auto", description='"auto" = ceil(d_model / 16)')
    dt_min: DtMin = 1e-3
    dt_max: DtMax = 0.1
    chunk_size: int = Field(default=32, gt=0, description="Lc of the chunked selective scan (32 took "
                            "0.59-1.03x the time of 64 over training shapes, docs/results.md)")

    def inner_dim(self, d_model: int) -> int:
        return self.expand * d_model

    def rank(self, d_model: int) -> int:
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else self.dt_rank

    def describe(self) -> str:
        return f"mamba(d_state={self.d_state})"


@dataclass
class MambaState:
    """Recurrent state of one Mamba layer."""

    conv: Tensor  # (B, d_inner, d_conv - 1): the last conv inputs
    ssm: Tensor  # (B, d_inner, N), float32


def _inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, i.e. log(exp(y) - 1), written to stay exact for small y."""
    return y + torch.log(-torch.expm1(-y))


class Mamba(Mixer):
    """Mamba-1 mixer; training and prefill use the chunked selective scan."""

    Config = MambaConfig

    def __init__(self, d_model: int, config: MambaConfig) -> None:
        super().__init__(d_model, config)
        Dn, N, K, R = config.inner_dim(d_model), config.d_state, config.d_conv, config.rank(d_model)
        self.d_inner, self.d_state, self.dt_rank = Dn, N, R
        self.in_proj = nn.Linear(d_model, 2 * Dn, bias=False)
        bound = K**-0.5  # like nn.Conv1d with groups = channels: U(-1/sqrt(K), 1/sqrt(K))
        self.conv_weight = nn.Parameter(torch.empty(Dn, K).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(Dn).uniform_(-bound, bound))
        self.x_proj = nn.Linear(Dn, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, Dn)
        # paper's init: dt = softplus(bias) log-uniform in [dt_min, dt_max] at init, so each channel
        # starts with its own time scale; the low-rank weight is small (U(+-R^-1/2)).
        nn.init.uniform_(self.dt_proj.weight, -(R**-0.5), R**-0.5)
        log_dt = torch.empty(Dn).uniform_(math.log(config.dt_min), math.log(config.dt_max))
        with torch.no_grad():
            self.dt_proj.bias.copy_(_inverse_softplus(log_dt.exp().clamp(min=1e-4)))
        # S4D-real: A[d, n] = -(n + 1), stored as its log so A stays negative under training
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(Dn, 1))
        self.D = nn.Parameter(torch.ones(Dn))
        self.A_log._no_weight_decay = True  # as in the paper; recallkit.training honours it
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(Dn, d_model, bias=False)

    def _mix(self, x: Tensor, state: MambaState | None, scan) -> tuple[Tensor, MambaState]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``scan`` a selective-scan form."""
        xi, z = self.in_proj(x).chunk(2, dim=-1)  # (B, T, Dn) each
        xc, tail = short_conv(xi, self.conv_weight, self.conv_bias,
                              state=None if state is None else state.conv)
        xc = F.silu(xc)
        dt_low, Bm, Cm = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))  # (B, T, Dn), > 0
        A = -torch.exp(self.A_log.to(compute_dtype(x)))  # (Dn, N), < 0
        y, h = scan(xc, dt, A, Bm, Cm, self.D, state=None if state is None else state.ssm)
        return self.out_proj(y * F.silu(z)), MambaState(tail, h)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: MambaState | None = None):
        chunked = functools.partial(selective_scan_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        conv = torch.zeros(batch_size, self.d_inner, self.config.d_conv - 1, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=compute_dtype(dtype))
        return MambaState(conv, ssm)

    def step(self, x_t: Tensor, state: MambaState) -> tuple[Tensor, MambaState]:
        y, state = self._mix(x_t.unsqueeze(1), state, selective_scan_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.d_inner * (self.config.d_conv - 1) + self.d_inner * self.d_state
