"""Gated DeltaNet (Yang, Kautz, Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with Delta
Rule", arXiv 2412.06464).

Per head, S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T q_t, with
a data-dependent scalar decay alpha_t = exp(g_t) per head in the Mamba-2 parametrisation
g_t = -softplus(W_a x_t + dt_bias) * exp(A_log): the gate erases the whole memory quickly, the delta
rule edits single associations precisely. The block is DeltaNet's (SiLU + L2-normalised q, k,
beta_t = sigmoid(W_beta x_t), RMSNorm per head) plus the decay and a swish output gate:
y = W_o (RMSNorm_h(o) ⊙ SiLU(W_g x)); as there, v gets no SiLU (the released fla layer applies one)
and the short convs are the generic ``short_conv`` option. d_k = d_v = d_model / H; the state per layer is
S (H, d_k, d_v): H * d_k * d_v numbers. Training and prefill use the chunked gated delta-rule kernel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recallkit.base_config import DtMax, DtMin
from recallkit.mixers.deltanet import DeltaNet, DeltaNetConfig
from recallkit.ops.numerics import compute_dtype


class GatedDeltaNetConfig(DeltaNetConfig):
    """Gated DeltaNet: DeltaNet with a Mamba-2 style scalar decay per head and a swish output gate."""

    name: Literal["gated_deltanet"] = "gated_deltanet"  # type: ignore[assignment]
    dt_min: DtMin = 1e-3
    dt_max: DtMax = 0.1


class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet mixer; its state is S (B, H, d_k, d_v) in float32."""

    Config = GatedDeltaNetConfig

    def __init__(self, d_model: int, config: GatedDeltaNetConfig) -> None:
        super().__init__(d_model, config)
        H = self.num_heads
        self.decay = nn.Linear(d_model, H, bias=False)  # W_a
        # Mamba-2's init: dt = softplus(dt_bias) log-uniform in [dt_min, dt_max], A uniform in [1, 16],
        # so log-decays -dt * A start in ~[-1.6, -1e-3] per step (memories of ~1 to ~1000 tokens)
        dt = torch.empty(H).uniform_(math.log(config.dt_min), math.log(config.dt_max)).exp().clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        for p in (self.dt_bias, self.A_log):
            p._no_weight_decay = True  # as in Mamba-2; recallkit.training honours it
        self.out_gate = nn.Linear(d_model, d_model, bias=False)  # W_g

    def _log_decay(self, x: Tensor) -> Tensor:
        # g = -softplus(W_a x + dt_bias) * exp(A_log), (B, H, T), float32 (float64 for float64 x), <= 0
        ct = compute_dtype(x)
        dt = F.softplus(self.decay(x).to(ct) + self.dt_bias)  # (B, T, H)
        return (-dt * torch.exp(self.A_log.to(ct))).transpose(1, 2)

    def _gate(self, x: Tensor, o: Tensor) -> Tensor:
        return o * F.silu(self.out_gate(x))  # swish output gate, (B, T, D)
