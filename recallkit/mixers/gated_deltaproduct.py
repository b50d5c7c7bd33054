"""Gated DeltaProduct (Siems, Carstensen, Zela, Hutter, Pontil, Grazzi 2025, "DeltaProduct: Improving
State-Tracking in Linear RNNs via Householder Products", arXiv 2502.10297).

Per head and token, Gated DeltaNet's scalar decay, then n_h delta-rule steps, each with its own
L2-normalised key k_{t,j}, value v_{t,j} and strength beta_{t,j} (n_h times the k, v and beta
projections):

    S <- exp(g_t) S;  S <- S + beta_{t,j} k_{t,j} (v_{t,j} - S^T k_{t,j})^T for j = 1..n_h;  o_t = S_t^T q_t,

i.e., with the generalised Householder matrices H_{t,j} = I - beta_{t,j} k_{t,j} k_{t,j}^T,

    S_t = exp(g_t) H_{t,n_h} ... H_{t,1} S_{t-1} + sum_j H_{t,n_h} ... H_{t,j+1} beta_{t,j} k_{t,j} v_{t,j}^T:

a transition of identity plus rank n_h, more expressive (rotations, permutations: the paper's
state-tracking results) than one step per token. The output reads the state after all n_h steps.
g_t = -softplus(W_a x_t + dt_bias) exp(A_log) as in Gated DeltaNet, and beta_{t,j} = sigmoid(W_beta^j x_t),
or 2 sigmoid(.) in [0, 2] with ``allow_neg_eigval`` (the paper's negative eigenvalues, needed for
parity-like state tracking). The rest of the block is ``gated_deltanet``'s: SiLU then L2 normalisation
of q and the keys per head, RMSNorm per head and a swish output gate,
y = W_o (RMSNorm_h(o) ⊙ SiLU(W_g x)). The first step's q, k, v and beta use Gated DeltaNet's own
projections (``qkv``, ``beta``); steps 2..n_h add ``extra_kv`` and ``extra_beta``, so
``num_householder=1`` is ``gated_deltanet`` with the same weights. d_k = d_v = d_model / H; the state
per layer is S (H, d_k, d_v): H * d_k * d_v = d_model^2 / H numbers, whatever n_h (plus
d_model * (K - 1) for the tails of a ``short_conv`` of K taps, counted by its wrapper). Training and
prefill run the chunked gated delta rule over the T * n_h interleaved micro-steps
(``recallkit.ops.delta_product_chunked``; ``chunk_size`` counts micro-steps).

Deviations from the paper (and its released fla ``GatedDeltaProduct``), all shared with recallkit's
``gated_deltanet``:
- the short convs on q, k, v (each with a SiLU) are not built in: the generic ``short_conv`` option
  (one conv of K taps on the block input) stands in, and v gets no SiLU;
- q is not scaled by 1 / sqrt(d_k): the per-head RMSNorm after the recurrence removes the scale;
- d_k = d_v = d_model / H (fla: head_dim 256 and expand_v 2), as many key as value heads;
- ``allow_neg_eigval`` defaults to False (fla's layer: True), the beta in [0, 1] of Gated DeltaNet.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.mixers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from recallkit.ops.delta_product import delta_product_chunked, delta_product_recurrent
from recallkit.ops.numerics import compute_dtype


class GatedDeltaProductConfig(GatedDeltaNetConfig):
    """Gated DeltaProduct: Gated DeltaNet with n_h delta-rule steps (Householder factors) per token."""

    name: Literal["gated_deltaproduct"] = "gated_deltaproduct"  # type: ignore[assignment]
    num_householder: int = Field(default=2, ge=1, description="n_h: delta-rule steps per token")
    allow_neg_eigval: bool = Field(default=False, description="beta in [0, 2] instead of [0, 1]")


class GatedDeltaProduct(GatedDeltaNet):
    """Gated DeltaProduct mixer; its state is S (B, H, d_k, d_v) in float32, as Gated DeltaNet's."""

    Config = GatedDeltaProductConfig

    def __init__(self, d_model: int, config: GatedDeltaProductConfig) -> None:
        super().__init__(d_model, config)
        extra = config.num_householder - 1
        if extra:  # steps 2..n_h: their own keys, values (W_k^j, W_v^j) and strengths (W_beta^j)
            self.extra_kv = nn.Linear(d_model, 2 * extra * d_model, bias=False)
            self.extra_beta = nn.Linear(d_model, extra * self.num_heads, bias=False)

    def _step_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q (B, H, T, dh), k, v (B, H, T, n_h, dh) and beta (B, H, T, n_h) of every step."""
        B, T, _ = x.shape
        H, dh, n = self.num_heads, self.head_dim, self.config.num_householder
        q, k, v = self.qkv(x).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, dh)
        k, v, b = k[:, :, :, None], v[:, :, :, None], self.beta(x)[:, :, None]  # step 1; b (B, T, 1, H)
        if n > 1:
            # (B, H, T, n_h - 1, dh) each
            k2, v2 = self.extra_kv(x).view(B, T, 2, n - 1, H, dh).permute(2, 0, 4, 1, 3, 5)
            k, v = torch.cat([k, k2], dim=3), torch.cat([v, v2], dim=3)
            b = torch.cat([b, self.extra_beta(x).view(B, T, n - 1, H)], dim=2)  # (B, T, n_h, H)
        q, k = F.normalize(F.silu(q), dim=-1), F.normalize(F.silu(k), dim=-1)  # unit q and keys per head
        beta = torch.sigmoid(b.to(compute_dtype(x))).permute(0, 3, 1, 2)  # (B, H, T, n_h) in (0, 1)
        return q, k, v, 2 * beta if self.config.allow_neg_eigval else beta

    def _mix(self, x: Tensor, state: Tensor | None, kernel) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a delta-product form."""
        B, T, D = x.shape
        q, k, v, beta = self._step_inputs(x)
        o, state = kernel(q, k, v, beta, self._log_decay(x), state=state)  # (B, H, T, dh)
        o = self.norm(o.transpose(1, 2)).reshape(B, T, D)  # RMSNorm per head
        return self.out(self._gate(x, o)), state

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        chunked = functools.partial(delta_product_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self._mix(x_t.unsqueeze(1), state, delta_product_recurrent)
        return y.squeeze(1), state
