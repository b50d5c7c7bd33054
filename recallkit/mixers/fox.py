"""The Forgetting Transformer's attention, FoX (Lin, Nikishin, He, Courville 2025, "Forgetting Transformer:
Softmax Attention with a Forget Gate", arXiv 2503.02130, ICLR 2025).

Softmax attention whose logits carry a data-dependent decay: per head,
o_i = sum_{j<=i} softmax_j(q_i^T k_j / sqrt(d_h) + D_ij) v_j with D_ij = sum_{l=j+1..i} log f_l and
one scalar forget gate per head and token f_t = sigmoid(w_f^T x_t + b_f). As a recurrence, token t
appends (k_t, v_t) to the KV cache, adds log f_t to every cached token's decay bias and enters with
bias 0 (``recallkit.ops.forgetting_attention``). No positional encoding (NoPE, the paper's FoX): the
forget gate is the only source of order. The block: q, k, v projections (no bias), the forget gate
w_f, b_f per head, forgetting attention, the output projection.

``pro=True`` is the paper's "Pro" block: data-dependent key and value shifts
k'_t = a_t k_{t-1} + (1 - a_t) k_t with a_t = sigmoid(W_a x_t) per head (likewise v with its own
W_a), QK-norm (RMSNorm per head on q and k', one weight per channel), and an output norm and gate:
y = W_o (sigmoid(W_g x) ⊙ RMSNorm_h(o)).

State per layer after T tokens: the cache's keys and values, 2 * T * d_model numbers, plus per cached
token and head its decay bias towards the last token, D_Tj = c_T - c_j with c_j = sum_{l<=j} log f_l
(T * H numbers): 2 * T * d_model + T * H; ``pro`` adds the last token's unshifted key and value
projections, 2 * d_model (plus d_model * (K - 1) for a ``short_conv`` of K taps, counted by its wrapper).

Deviations from the paper:
- the cache stores D_Tj = c_T - c_j (updated each token by adding log f_t) rather than log f_j or c_j:
  the same number of entries, differences that never cancel in float32 however long the context;
- the whole state, keys and values included, is kept in float32 (float64 for float64 inputs), as
  every recallkit state; the released code's cache is in the model's dtype;
- initialisation is PyTorch's default nn.Linear one (the forget gate's bias b_f uniform around 0), not
  the released code's N(0, 0.02) weights and zero biases; no decay-time initialisation of b_f (the
  released code allows it only for its data-independent gates);
- ``pro``: QK-norm and the output norm have one weight per head and channel (the released code's
  default since its fix; the paper's runs shared them across heads), RMSNorm eps 1e-6 as released;
- a ``short_conv`` in front (recallkit's generic option, used by the learning tests) is not FoX's;
- the state is not a :mod:`recallkit.kv.protocol` cache (``kv_cache`` is False): its eviction policies
  know keys and values only, not the decay bias each token carries;
- no attention pruning (the released code's optional ``log_pruning_tolerance``) and no GQA (the
  released code does not support it either).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.forgetting_attention import (
    ForgetCache,
    forgetting_attention_chunked,
    forgetting_attention_recurrent,
)
from recallkit.ops.numerics import compute_dtype

NORM_EPS = 1e-6


class FoXConfig(MixerConfig):
    """Forgetting attention: softmax attention plus a per-head, per-token scalar forget gate."""

    name: Literal["fox"] = "fox"
    num_heads: int = Field(default=1, gt=0)
    chunk_size: int = Field(default=64, gt=0, description="queries per SDPA call in the parallel form")
    pro: bool = Field(default=False, description="the Pro block: k/v shifts, QK-norm, output norm and gate")

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)

    def describe(self) -> str:
        return "fox(pro)" if self.pro else "fox"


@dataclass
class FoXState:
    """The forgetting-attention cache, and (``pro`` only) the last unshifted key and value."""

    cache: ForgetCache  # key, value (B, H, S, d_h), decay (B, H, S)
    shift: Tensor | None = None  # (B, 2, D): the last token's k and v projections, before the shift


def _head_rms_norm(x: Tensor, weight: Tensor) -> Tensor:
    """RMSNorm of each head of x (B, T, H, d_h) with one weight per channel, (H, d_h)."""
    return F.rms_norm(x, x.shape[-1:], eps=NORM_EPS) * weight


class FoX(Mixer):
    """Forgetting Transformer attention; its state is a KV cache plus a decay per token and head (float32)."""

    Config = FoXConfig

    def __init__(self, d_model: int, config: FoXConfig) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        H = self.num_heads = config.num_heads
        self.head_dim = d_model // H
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.forget = nn.Linear(d_model, H)  # w_f, b_f: one forget gate per head
        self.out = nn.Linear(d_model, d_model, bias=False)
        if config.pro:
            self.shift = nn.Linear(d_model, 2 * H, bias=False)  # W_a of the key and the value shifts
            self.q_norm = nn.Parameter(torch.ones(H, self.head_dim))
            self.k_norm = nn.Parameter(torch.ones(H, self.head_dim))
            self.out_norm = nn.Parameter(torch.ones(H, self.head_dim))
            for gain in (self.q_norm, self.k_norm, self.out_norm):
                gain._no_weight_decay = True  # norm gains, per head: (H, d_h) is no matrix to decay
            self.gate = nn.Linear(d_model, d_model, bias=False)  # W_g

    def _shift(self, x: Tensor, kv: Tensor, last: Tensor) -> Tensor:
        """k'_t = a_t k_{t-1} + (1 - a_t) k_t (and v): kv (B, T, 2, H, d_h), last (B, 2, D) the
        projections of the token before x."""
        a = torch.sigmoid(self.shift(x)).unflatten(-1, (2, self.num_heads))[..., None]  # (B, T, 2, H, 1)
        before = torch.cat([last.to(kv.dtype).unflatten(-1, (self.num_heads, self.head_dim))[:, None],
                            kv[:, :-1]], dim=1)  # (B, T, 2, H, d_h)
        return a * before + (1 - a) * kv

    def _mix(self, x: Tensor, state: FoXState | None, kernel) -> tuple[Tensor, FoXState]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a forgetting-attention form."""
        B, T, D = x.shape
        state = self.init_state(B, x.device, x.dtype) if state is None else state
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim))  # (B, T, 3, H, d_h)
        q, kv = qkv.split([1, 2], dim=2)  # (B, T, 1, H, d_h), (B, T, 2, H, d_h)
        q, shift = q[:, :, 0], None
        if self.config.pro:
            if T:
                shift = kv[:, -1].flatten(-2).to(state.shift.dtype)  # (B, 2, D)
                kv = self._shift(x, kv, state.shift)
            else:
                shift = state.shift
            q, k = _head_rms_norm(q, self.q_norm), _head_rms_norm(kv[:, :, 0], self.k_norm)
            kv = torch.stack([k, kv[:, :, 1]], dim=2)
        log_f = F.logsigmoid(self.forget(x).to(compute_dtype(x))).transpose(1, 2)  # (B, H, T), <= 0
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H, T, d_h)
        o, cache = kernel(q.transpose(1, 2), k, v, log_f, state=state.cache)  # (B, H, T, d_h)
        if self.config.pro:
            o = _head_rms_norm(o.transpose(1, 2), self.out_norm).flatten(-2) * torch.sigmoid(self.gate(x))
        else:
            o = merge_heads(o)
        return self.out(o), FoXState(cache, shift)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: FoXState | None = None):
        return self._mix(x, state, functools.partial(forgetting_attention_chunked,
                                                     chunk_size=self.config.chunk_size))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> FoXState:
        ct = compute_dtype(dtype)
        key = torch.zeros(batch_size, self.num_heads, 0, self.head_dim, device=device, dtype=ct)
        cache = ForgetCache(key, key.clone(), key.new_zeros(batch_size, self.num_heads, 0))
        shift = key.new_zeros(batch_size, 2, self.d_model) if self.config.pro else None
        return FoXState(cache, shift)

    def step(self, x_t: Tensor, state: FoXState) -> tuple[Tensor, FoXState]:
        y, state = self._mix(x_t.unsqueeze(1), state, forgetting_attention_recurrent)
        return y.squeeze(1), state

    def kv_numbers_per_token(self) -> int:
        """Cache numbers one token adds: its key and value, 2 * d_model, and a decay bias per head."""
        return 2 * self.d_model + self.num_heads

    def state_size(self, seq_len: int) -> int:
        return self.kv_numbers_per_token() * seq_len + (2 * self.d_model if self.config.pro else 0)
