"""Kimi Delta Attention, KDA (Kimi Team: Zhang, Lin, Yao, Hu, et al. 2025, "Kimi Linear: An Expressive,
Efficient Attention Architecture", arXiv 2510.26692, section 3).

Per head, S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T q_t:
Gated DeltaNet with its scalar decay per head replaced by one decay per key channel,
alpha_t = exp(g_t) in (0, 1]^{d_k}, so each row of the memory forgets at its own data-dependent rate.
The block, as in the paper and its released implementation (fla ``KimiDeltaAttention``):
q, k, v projections, SiLU then L2 normalisation of q and k per head, beta_t = sigmoid(W_beta x_t) per
head, the per-channel log-decay from a low-rank projection (the paper), in the released code's
Mamba-2 / Gated DeltaNet parametrisation g_t = -exp(A_log_h) * softplus(W_f_up W_f_down x_t + dt_bias)
(rank ``gate_rank``, d_model / H by default as in fla; dt_bias one per channel, A one per head;
dt_bias and A initialised as Mamba-2's dt and A), the recurrence, RMSNorm
per head, and a low-rank sigmoid output gate: y = W_o (sigmoid(W_g_up W_g_down x + b_g) ⊙ RMSNorm_h(o)).
d_k = d_v = d_model / H; the state per layer is S (H, d_k, d_v): H * d_k * d_v = d_model^2 / H numbers
(plus d_model * (K - 1) for the tails of a ``short_conv`` of K taps, counted by its wrapper).
Training and prefill use the chunked KDA kernel of ``recallkit.ops`` (WY / UT transform with
per-channel cumulative decays).

Deviations from the paper, all shared with recallkit's ``deltanet`` / ``gated_deltanet`` so that the
three differ in their gates only (the decay, and the output gate: swish full-rank in gated_deltanet):
- the paper's short convs on q, k, v (each followed by SiLU) are not built in: the generic
  ``short_conv`` option (one conv of K taps on the block input, the Zoology recipe) stands in, and v
  gets no SiLU;
- q is not scaled by 1 / sqrt(d_k) (fla's kernel default): the per-head RMSNorm right after the
  recurrence removes any constant scale of o up to its eps;
- d_k = d_v = d_model / H with as many key as value heads (the paper: 128 each, no GQA either);
- the paper's hybrid (3 KDA layers per MLA layer, NoPE) is a model-level choice: see
  ``ModelConfig.mixer`` lists, not this mixer.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import DtMax, DtMin
from recallkit.mixers.deltanet import DeltaNet, DeltaNetConfig
from recallkit.ops.kda import kda_chunked, kda_recurrent
from recallkit.ops.numerics import compute_dtype


class KDAConfig(DeltaNetConfig):
    """KDA: the delta rule with a low-rank data-dependent decay per key channel and a sigmoid output
    gate."""

    name: Literal["kda"] = "kda"  # type: ignore[assignment]
    gate_rank: int | None = Field(default=None, gt=0,
                                  description="rank of the decay and output-gate projections; "
                                              "None = d_model / num_heads (fla's choice)")
    dt_min: DtMin = 1e-3
    dt_max: DtMax = 0.1


class KDA(DeltaNet):
    """Kimi Delta Attention mixer; its state is S (B, H, d_k, d_v) in float32."""

    Config = KDAConfig

    def __init__(self, d_model: int, config: KDAConfig) -> None:
        super().__init__(d_model, config)
        H, dh = self.num_heads, self.head_dim
        rank = config.gate_rank or dh
        self.decay_down = nn.Linear(d_model, rank, bias=False)  # W_f_down
        self.decay_up = nn.Linear(rank, d_model, bias=False)  # W_f_up: one log-decay per key channel
        # Mamba-2's init per channel: dt = softplus(dt_bias) log-uniform in [dt_min, dt_max], A uniform
        # in [1, 16] per head, so the log-decays -dt * A start in ~[-1.6, -1e-3] per step
        log_dt = torch.empty(d_model).uniform_(math.log(config.dt_min), math.log(config.dt_max))
        dt = log_dt.exp().clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^{-1}(dt)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(1, 16).log())
        for p in (self.dt_bias, self.A_log):
            p._no_weight_decay = True  # as in Mamba-2 and fla; recallkit.training honours it
        self.gate_down = nn.Linear(d_model, rank, bias=False)  # W_g_down
        self.gate_up = nn.Linear(rank, d_model)  # W_g_up and b_g

    def _log_decay(self, x: Tensor) -> Tensor:
        # g = -exp(A_log_h) * softplus(W_f_up W_f_down x + dt_bias), (B, H, T, d_k), float32+, <= 0
        B, T, _ = x.shape
        ct = compute_dtype(x)
        dt = F.softplus(self.decay_up(self.decay_down(x)).to(ct) + self.dt_bias)  # (B, T, D)
        dt = dt.view(B, T, self.num_heads, self.head_dim)
        return (-dt * torch.exp(self.A_log.to(ct))[:, None]).transpose(1, 2)

    def _gate(self, x: Tensor, o: Tensor) -> Tensor:
        return o * torch.sigmoid(self.gate_up(self.gate_down(x)))  # low-rank sigmoid output gate

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        chunked = functools.partial(kda_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self._mix(x_t.unsqueeze(1), state, kda_recurrent)
        return y.squeeze(1), state
