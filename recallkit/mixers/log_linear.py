"""Log-linear Mamba-2 (Guo, Yang, Goel, Xing, Dao, Kim 2025, "Log-Linear Attention", arXiv 2506.04761,
section 3.3): Mamba-2 whose single state is replaced by a Fenwick-tree hierarchy of states.

The block is recallkit's ``mamba2`` (in_proj to z, x, B, C, dt; conv + SiLU on (x, B, C); y + D x; gated
RMSNorm; out_proj) with one more projection: per head h and level l, lam_t^(l) = softplus(W_lam x_t)
>= 0 from the block input. Per head, with a_t = exp(dt_t A_h), keys B, queries C and values dt_t x_t,
the prefix [0, t] of query t is split by the Fenwick tree of t into level 0 = {t} and, for each set bit
j of t, level j + 1 = the 2^j tokens s < t agreeing with t above bit j (level(t, s) = bit_length(t XOR s)),
each with its own scalar-gated state S_t^(l) = sum_{s in level l} (a_{s+1} ... a_t) B_s (dt_s x_s)^T, and
y_t = sum_l lam_t^(l) S_t^(l)^T C_t + D_h x_t. Parallel form: Y = ((C B^T) ⊙ M^S ⊙ M^H) (dt X) with the
Mamba-2 decay mask M^S and M^H_ts = lam_t^{level(t, s)}. Recurrently, token t decays every level by a_t,
reads them, and then merges itself with the levels of t's trailing one bits into the level of its lowest
zero bit (a Fenwick / binary-counter increment); ``recallkit.ops.log_linear`` holds the token loop, the
quadratic form and the chunkwise form (training and prefill).

State per layer after T tokens: one slot per level that exists by then, L(T) = floor(log2 T) + 1 slots
(0 at T = 0), each Mamba-2's (H, N, P), plus the conv tail: L(T) * H * P * N + (d_inner + 2N) * (d_conv - 1)
numbers. Slot j holds level j + 1, the bucket of bit j of T, and is zero while that bit is clear (a dead
level: only popcount(T) slots are live, 1 at every power of two, where all buckets have merged into one).
The dead slots are held anyway: decoding to T must provision all L(T) of them, the paper's O(log T) state
(its ceil(log2 T) + 1 counts level 0, the current token, too), and the state grows by one slot each time
T reaches a power of two. The slots are one (B, H, L(T), N, P) tensor with T itself
(``recallkit.ops.LogLinearState``).

Deviations from the paper and its released code (fla ``LogLinearMamba2``):
- lam = softplus(W_lam x_t) as the paper writes it; the released code scales the projection by a learned
  per-(head, level) factor first (softplus(L_hl * dl_t)), which only reparametrises W_lam;
- W_lam is its own bias-free linear map of the block input (the released code: extra rows of in_proj,
  the same function);
- ``num_levels`` weights are learned; a level above num_levels - 1 (positions past 2^(num_levels - 1))
  reuses the weight of level num_levels - 1 rather than failing (its buckets stay separate states);
- the Mamba-2 block's own deviations (ngroups = 1, no dt limit, the conv and norm as recallkit's
  ``mamba2``) carry over unchanged.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.mixers.mamba2 import Mamba2, Mamba2Config, Mamba2State
from recallkit.ops.log_linear import (
    LogLinearState,
    level_slots,
    log_linear_chunked,
    log_linear_recurrent,
)
from recallkit.ops.numerics import compute_dtype


class LogLinearConfig(Mamba2Config):
    """Log-linear Mamba-2: Mamba-2 with a Fenwick hierarchy of states and data-dependent level weights."""

    name: Literal["log_linear"] = "log_linear"  # type: ignore[assignment]
    num_levels: int = Field(default=16, ge=2, description="learned level weights (level 0 = the token "
                                                          "itself); higher levels reuse the last one")
    chunk_size: int = Field(default=64, gt=0, description="C of the chunked kernel (Mamba-2's 32 measured "
                            "0.87x / 1.28x the speed of 64 on training steps: not adopted, docs/results.md)")

    def describe(self) -> str:
        return f"log_linear(d_state={self.d_state})"


class LogLinearMamba2(Mamba2):
    """Log-linear Mamba-2 mixer; its state is Mamba2State(conv, ssm=LogLinearState of the level slots)."""

    Config = LogLinearConfig

    def __init__(self, d_model: int, config: LogLinearConfig) -> None:
        super().__init__(d_model, config)
        self.level_proj = nn.Linear(d_model, self.num_heads * config.num_levels, bias=False)  # W_lam

    def _level_weights(self, x: Tensor, start: int) -> Tensor:
        """lam (B, H, T, L) for positions start .. start + T - 1, L = the levels they reach."""
        B, T, _ = x.shape
        L = max(start + T - 1, 0).bit_length() + 1
        lam = F.softplus(self.level_proj(x).to(compute_dtype(x)))  # (B, T, H * num_levels), >= 0
        lam = lam.view(B, T, self.num_heads, self.config.num_levels).transpose(1, 2)  # (B, H, T, num_levels)
        levels = torch.arange(L, device=x.device).clamp(max=self.config.num_levels - 1)
        return lam[..., levels]

    def _log_linear(self, x: Tensor, state: Mamba2State | None, kernel) -> tuple[Tensor, Mamba2State]:
        start = 0 if state is None else state.ssm.position
        return self._mix(x, state, functools.partial(kernel, lam=self._level_weights(x, start)))

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: Mamba2State | None = None):
        chunked = functools.partial(log_linear_chunked, chunk_size=self.config.chunk_size)
        return self._log_linear(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Mamba2State:
        conv = torch.zeros(batch_size, self.conv_dim, self.config.d_conv - 1, device=device, dtype=dtype)
        levels = torch.zeros(batch_size, self.num_heads, 0, self.d_state, self.head_dim, device=device,
                             dtype=compute_dtype(dtype))  # no level slot before the first token
        return Mamba2State(conv, LogLinearState(levels, 0))

    def step(self, x_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        y, state = self._log_linear(x_t.unsqueeze(1), state, log_linear_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        levels = level_slots(seq_len)  # floor(log2 seq_len) + 1, dead levels included
        ssm = levels * self.num_heads * self.d_state * self.head_dim
        return ssm + self.conv_dim * (self.config.d_conv - 1)

