"""DeltaNet (Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear Transformers with the Delta Rule
over Sequence Length", arXiv 2406.06484).

Per head, S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T and o_t = S_t^T q_t: each token
replaces (a beta_t fraction of) the value stored under its key instead of adding to it, so the
state behaves like an associative memory that can overwrite. The block: q, k, v projections,
SiLU then L2 normalisation of q and k per head (unit keys keep I - beta k k^T a contraction),
beta_t = sigmoid(W_beta x_t) per head, the delta rule, RMSNorm per head and the output projection.
The paper's short convs on q, k, v (each followed by SiLU) are the generic ``short_conv`` option (the
Zoology recipe), not built in, and v gets no SiLU (the released fla layer applies one: v stays signed
here). d_k = d_v = d_model / H; the state per layer is S (H, d_k, d_v): H * d_k * d_v numbers.
Training and prefill use the chunked WY / UT-transform kernel of ``recallkit.ops``.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.delta_rule import delta_rule_chunked, delta_rule_recurrent
from recallkit.ops.numerics import compute_dtype


class DeltaNetConfig(MixerConfig):
    """DeltaNet: the delta-rule memory with L2-normalised SiLU keys/queries and a per-head RMSNorm."""

    name: Literal["deltanet"] = "deltanet"
    num_heads: int = Field(default=4, gt=0)
    chunk_size: int = Field(default=32, gt=0, description="C of the chunked delta rule (32 took "
                            "0.44-0.95x the time of 64 over training and bench shapes, docs/results.md)")

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)


class DeltaNet(Mixer):
    """DeltaNet mixer; its state is S (B, H, d_k, d_v) in float32.

    Subclasses hook in a per-head log-decay (:meth:`_log_decay`) and an output gate (:meth:`_gate`).
    """

    Config = DeltaNetConfig

    def __init__(self, d_model: int, config: DeltaNetConfig) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        H = self.num_heads = config.num_heads
        self.head_dim = d_model // H  # d_k = d_v
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.beta = nn.Linear(d_model, H, bias=False)  # W_beta: sigmoid(0) = 0.5 half-writes at init
        self.norm = nn.RMSNorm(self.head_dim, eps=1e-5)  # per head, weight shared by the heads
        self.out = nn.Linear(d_model, d_model, bias=False)

    def _log_decay(self, x: Tensor) -> Tensor | None:
        """Per-head log-decay g (B, H, T) <= 0, or None for no decay (plain DeltaNet)."""
        return None

    def _gate(self, x: Tensor, o: Tensor) -> Tensor:
        """Output gate applied to the normalised heads o (B, T, D); identity here."""
        return o

    def _mix(self, x: Tensor, state: Tensor | None, kernel) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a delta-rule form."""
        B, T, D = x.shape
        H, dh = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, dh)
        q, k = F.normalize(F.silu(q), dim=-1), F.normalize(F.silu(k), dim=-1)  # unit q, k per head
        beta = torch.sigmoid(self.beta(x).to(compute_dtype(x))).transpose(1, 2)  # (B, H, T) in (0, 1)
        o, state = kernel(q, k, v, beta, self._log_decay(x), state=state)  # (B, H, T, dh)
        o = self.norm(o.transpose(1, 2)).reshape(B, T, D)  # RMSNorm per head
        return self.out(self._gate(x, o)), state

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Tensor | None = None):
        chunked = functools.partial(delta_rule_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        shape = (batch_size, self.num_heads, self.head_dim, self.head_dim)
        return torch.zeros(shape, device=device, dtype=compute_dtype(dtype))

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        y, state = self._mix(x_t.unsqueeze(1), state, delta_rule_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * self.head_dim
