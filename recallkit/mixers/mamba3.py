"""Mamba-3, SISO (Lahoti, Li, Chen, Wang, Bick, Kolter, Dao, Gu 2026, "Mamba-3: Improved Sequence Modeling
using State Space Principles", arXiv 2603.15569).

Per head h (H = d_inner / P heads of P channels), with the exponential-trapezoidal discretisation
(alpha_t = exp(dt_t A_t), lam_t in [0, 1] data-dependent):

    h_t = alpha_t h_{t-1} + (1 - lam_t) dt_t alpha_t B_{t-1} x_{t-1}^T + lam_t dt_t B_t x_t^T,
    y_t = h_t^T C_t + D_h x_t,                                                h: (N, P),

and a complex-valued state in its real "RoPE" form: B_t and C_t are rotated pairwise,
(b_{2i}, b_{2i+1}) by the cumulative data-dependent angle phi_{t,i} = phi_{t-1,i} + pi tanh(theta_{t,i}) dt_t,
for the first 2S = 2 floor(rope_fraction * N / 2) channels (the rest stay real), which equals the
complex transition alpha_t exp(-i pi tanh(theta_t) dt_t) on the unrotated B, C. The block, as in the
paper and its released ``Mamba3`` module: one in_proj to (z, x, B, C, dt, A, lam, theta) (B, C and theta
shared by the heads; dt, A, lam one per head), dt_t = softplus(dt' + dt_bias), A_t = -softplus(A') capped
at -A_floor (the paper's; the released module has since moved to another activation for A),
lam_t = sigmoid(lam'), B and C each RMS-normalised over N (the paper's QK-norm, with a
learnable weight) plus a learnable bias per head (initialised to 1), then rotated, no short conv, the
SSM, y + D x, the output gate y ⊙ SiLU(z) and out_proj (no output norm: the BC norm replaces it).

State per layer: h (H, N, P), the previous token's rotated B (H, N) and x (H, P) for the trapezoid
term, and the cumulative angle (H, S): H * P * N + H * N + H * P + H * S numbers (S = 4 at N = 16;
plus (d_model) * (K - 1) for the tails of a ``short_conv`` of K taps, counted by its wrapper).
Training and prefill use ``recallkit.ops.mamba3_chunked`` (the scalar-gated chunked kernel; equal to
the token loop up to float rounding).

Deviations from the paper:
- SISO only: the MIMO variant (rank-R B, C and x projections) is not built;
- one group of B / C (ngroups = 1), as Mamba-2 here; the cumulative angle is carried modulo 2 pi (as
  the released kernel does), computed in float32 for float32 inputs;
- the paper's Llama-style layout (Mamba-3 blocks alternating with SwiGLU MLPs) is a model-level choice
  (``ModelConfig.mlp``), not this mixer; MQAR runs here use the generic ``short_conv`` in front when
  asked to (Mamba-3 itself has none).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from recallkit.base_config import DtMax, DtMin, MixerConfig
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.mamba3 import mamba3_chunked, mamba3_recurrent, rotate_pairs
from recallkit.ops.numerics import compute_dtype


class Mamba3Config(MixerConfig):
    """Mamba-3 SISO block: exponential-trapezoidal SSM with a scalar decay per head, rotated (complex)
    B / C with QK-norm and per-head biases, no conv, SiLU output gate."""

    name: Literal["mamba3"] = "mamba3"
    d_state: int = Field(default=16, ge=2, description="N, state width per head (keys B / queries C)")
    expand: int = Field(default=2, gt=0, description="d_inner = expand * d_model")
    head_dim: int = Field(default=16, gt=0, description="P; H = d_inner / P heads")
    rope_fraction: Literal[0.5, 1.0] = Field(default=0.5, description="share of B / C channels rotated")
    dt_min: DtMin = 1e-3
    dt_max: DtMax = 0.1
    A_floor: float = Field(default=1e-4, gt=0, description="A_t <= -A_floor: every step decays a little")
    chunk_size: int = Field(default=32, gt=0, description="C of the chunked kernel (32 took "
                            "0.71-0.87x the time of 64 over training steps, docs/results.md)")

    @model_validator(mode="after")
    def _check(self) -> Mamba3Config:
        if self.num_angles < 1:
            raise ValueError(f"mamba3 d_state={self.d_state} with rope_fraction={self.rope_fraction} "
                             "rotates no channel pair; use d_state >= 4 (or rope_fraction=1.0)")
        return self

    @property
    def num_angles(self) -> int:
        """S: rotated channel pairs of B and C."""
        return int(self.d_state * self.rope_fraction) // 2

    def check_width(self, d_model: int) -> None:
        if (self.expand * d_model) % self.head_dim:
            raise ValueError(f"mamba3 d_inner = expand * d_model = {self.expand * d_model} is not divisible "
                             f"by head_dim={self.head_dim}")

    def describe(self) -> str:
        return f"mamba3(d_state={self.d_state})"


@dataclass
class Mamba3State:
    """Recurrent state of one Mamba-3 layer (all float32, float64 for float64 inputs)."""

    ssm: Tensor  # (B, H, N, P): h
    last_b: Tensor  # (B, H, N): the previous token's rotated B, for the trapezoid term
    last_x: Tensor  # (B, H, P): the previous token's x
    angle: Tensor  # (B, H, S): cumulative rotation angle, modulo 2 pi


class Mamba3(Mixer):
    """Mamba-3 SISO mixer; training and prefill use the chunked kernel, step the token recurrence."""

    Config = Mamba3Config

    def __init__(self, d_model: int, config: Mamba3Config) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        Dn, N, P = config.expand * d_model, config.d_state, config.head_dim
        H, S = Dn // P, config.num_angles
        self.d_inner, self.d_state, self.head_dim, self.num_heads, self.num_angles = Dn, N, P, H, S
        self.splits = [Dn, Dn, N, N, H, H, H, S]  # z, x, B, C, dt, A, lam, theta
        self.in_proj = nn.Linear(d_model, sum(self.splits), bias=False)
        # Mamba-2's dt init: softplus(dt_bias) log-uniform in [dt_min, dt_max]
        dt = torch.empty(H).uniform_(math.log(config.dt_min), math.log(config.dt_max)).exp().clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        self.D = nn.Parameter(torch.ones(H))
        for p in (self.dt_bias, self.D):
            p._no_weight_decay = True  # as in the released code; recallkit.training honours it
        self.b_norm_weight, self.c_norm_weight = nn.Parameter(torch.ones(N)), nn.Parameter(torch.ones(N))
        self.b_bias, self.c_bias = nn.Parameter(torch.ones(H, N)), nn.Parameter(torch.ones(H, N))
        for p in (self.b_bias, self.c_bias):
            p._no_weight_decay = True  # biases (per head), though (H, N)-shaped
        self.out_proj = nn.Linear(Dn, d_model, bias=False)

    def _bc(self, raw: Tensor, weight: Tensor, bias: Tensor, angle: Tensor) -> Tensor:
        """RMSNorm over N, per-head bias, rotation: raw (B, T, N), angle (B, T, H, S) -> (B, H, T, N)."""
        normed = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
        return rotate_pairs((normed[:, :, None] + bias).to(angle.dtype), angle).transpose(1, 2)

    def _mix(self, x: Tensor, state: Mamba3State | None, kernel) -> tuple[Tensor, Mamba3State]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a form of the Mamba-3 SSM."""
        Bsz, T, _ = x.shape
        H, P = self.num_heads, self.head_dim
        z, xs, Bm, Cm, dt, a, lam, theta = self.in_proj(x).split(self.splits, dim=-1)
        ct = compute_dtype(x)  # float32 for float32 / half inputs, float64 for float64
        dt = F.softplus(dt.to(ct) + self.dt_bias)  # (B, T, H), > 0
        A = -F.softplus(a.to(ct)).clamp(min=self.config.A_floor)  # (B, T, H), <= -A_floor
        step = torch.tanh(theta.to(ct))[:, :, None] * math.pi * dt[..., None]  # (B, T, H, S)
        start = (torch.zeros(Bsz, H, self.num_angles, device=x.device, dtype=ct) if state is None
                 else state.angle)
        # phi_t, reduced mod 2 pi per token as step() does; the running sum in float64 so a long prefill
        # keeps the angle's precision (in float32 it grows as T and loses ~1e-2 rad by T ~ 1e5)
        angle = torch.remainder(start[:, None].double() + torch.cumsum(step.double(), dim=1),
                                2 * math.pi).to(ct)  # (B, T, H, S)
        q = self._bc(Cm, self.c_norm_weight, self.c_bias, angle)  # (B, H, T, N)
        k = self._bc(Bm, self.b_norm_weight, self.b_bias, angle)
        xh = xs.view(Bsz, T, H, P).transpose(1, 2)  # (B, H, T, P)
        carried = None if state is None else (state.ssm, state.last_b, state.last_x)
        y, (h, last_b, last_x) = kernel(q, k, xh, (dt * A).transpose(1, 2), dt.transpose(1, 2),
                                        torch.sigmoid(lam.to(ct)).transpose(1, 2), state=carried)
        y = merge_heads(y + self.D[:, None, None] * xh) * F.silu(z)  # (B, T, d_inner)
        end = angle[:, -1] if T else start
        return self.out_proj(y), Mamba3State(h, last_b, last_x, end)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Mamba3State | None = None):
        return self._mix(x, state, functools.partial(mamba3_chunked, chunk_size=self.config.chunk_size))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Mamba3State:
        H, N, P, ct = self.num_heads, self.d_state, self.head_dim, compute_dtype(dtype)
        zeros = functools.partial(torch.zeros, batch_size, H, device=device, dtype=ct)
        return Mamba3State(zeros(N, P), zeros(N), zeros(P), zeros(self.num_angles))

    def step(self, x_t: Tensor, state: Mamba3State) -> tuple[Tensor, Mamba3State]:
        y, state = self._mix(x_t.unsqueeze(1), state, mamba3_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        H, N, P = self.num_heads, self.d_state, self.head_dim
        return H * N * P + H * N + H * P + H * self.num_angles
