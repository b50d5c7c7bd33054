"""GSA, Gated Slot Attention (Zhang, Yang, Zhu, Zhang, Cui, Wang, Wang, Shi, Wang, Bi, Zhou, Fu 2024,
"Gated Slot Attention for Efficient Linear-Time Sequence Modeling", arXiv 2409.07146).

Per head, a memory of m slots (``num_slots``), each a key row and a value row, with a data-dependent
forget gate per slot alpha_t in (0, 1)^m whose complement 1 - alpha_t is the write weight:
K~_t = Diag(alpha_t) K~_{t-1} + (1 - alpha_t) k_t^T, V~_t = Diag(alpha_t) V~_{t-1} + (1 - alpha_t) v_t^T
(K~, V~: (m, d_h)) and o_t = V~_t^T softmax(K~_t q_t): a softmax read over the slots (ABC's bounded
memory with GLA's gating; two gated linear attentions joined by a softmax).
The block, as in the paper and the authors' released fla ``GatedSlotAttention`` (its defaults): q, k, v
projections, each followed by Swish; alpha_t = sigmoid(W_alpha x_t)^(1/tau) per slot and head, i.e.
log alpha_t = logsigmoid(W_alpha x_t) / tau with the damping tau = 8 (``gate_temperature``); the
recurrence with q unscaled (scale 1); then y = W_o RMSNorm(Swish(o)), the RMSNorm over the full width
(all heads), no output gate. d_h = d_model / H for keys and values.
The state per layer is (K~, V~) = (H, m, d_h) twice: 2 * m * d_model numbers, set by m alone and
independent of H (plus d_model * (K - 1) for the tails of a ``short_conv`` of K taps, counted by its
wrapper). Training and prefill use the chunked kernel of ``recallkit.ops.gsa`` (pass 1 the slot scores,
pass 2 the vector-gated GLA).

Deviations from the paper / its released code:
- the optional short convs on q, k, v of fla's layer (off by default there) are the generic
  ``short_conv`` option (one conv on the block input, the Zoology recipe) here;
- no grouped key/value heads (fla's ``num_kv_heads``; the paper uses none) and key width = value width
  = d_model (expand_k = expand_v = 1, the defaults);
- the write weight is computed as -expm1(log alpha_t) (= 1 - alpha_t, exact for slots that forget slowly);
- the paper's hybrid and T2R finetuning settings are model- and training-level choices, not this mixer.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer, merge_heads
from recallkit.ops.gsa import GSAState, gsa_chunked, gsa_recurrent
from recallkit.ops.numerics import compute_dtype


class GSAConfig(MixerConfig):
    """Gated slot attention: m gated key/value slots per head read through a softmax."""

    name: Literal["gsa"] = "gsa"
    num_heads: int = Field(default=4, gt=0)
    num_slots: int = Field(default=64, gt=0, description="m, slots per head: the state is 2 * m * d_model")
    gate_temperature: float = Field(default=8.0, gt=0,
                                    description="tau in log alpha = logsigmoid(W_alpha x) / tau (damping)")
    chunk_size: int = Field(default=64, gt=0)

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)


class GSA(Mixer):
    """Gated slot attention; its state is (K~ (B, H, m, d_h), V~ (B, H, m, d_h)) in float32."""

    Config = GSAConfig

    def __init__(self, d_model: int, config: GSAConfig) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        H = self.num_heads = config.num_heads
        self.head_dim = d_model // H
        self.num_slots = config.num_slots
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)  # W_q, W_k, W_v
        self.forget = nn.Linear(d_model, H * config.num_slots, bias=False)  # W_alpha, one logit per slot
        self.norm = nn.RMSNorm(d_model, eps=1e-5)  # over all heads together, as fla's g_norm
        self.out = nn.Linear(d_model, d_model, bias=False)  # W_o

    def _mix(self, x: Tensor, state: GSAState | None, kernel) -> tuple[Tensor, GSAState]:
        """x (B, T, D) -> y (B, T, D) and the slots after it, with ``kernel`` a GSA form."""
        B, T, D = x.shape
        H, dh, m = self.num_heads, self.head_dim, self.num_slots
        q, k, v = F.silu(self.qkv(x)).view(B, T, 3, H, dh).permute(2, 0, 3, 1, 4)  # each (B, H, T, d_h)
        logits = self.forget(x).to(compute_dtype(x))  # promoted: float64 stays float64
        g = (F.logsigmoid(logits) / self.config.gate_temperature).view(B, T, H, m).transpose(1, 2)  # < 0
        o, state = kernel(q, k, v, g, state=state)  # (B, H, T, d_h)
        return self.out(self.norm(F.silu(merge_heads(o)))), state  # W_o RMSNorm(Swish(o))

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: GSAState | None = None):
        return self._mix(x, state, functools.partial(gsa_chunked, chunk_size=self.config.chunk_size))

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> GSAState:
        shape = (batch_size, self.num_heads, self.num_slots, self.head_dim)
        ct = compute_dtype(dtype)
        return torch.zeros(shape, device=device, dtype=ct), torch.zeros(shape, device=device, dtype=ct)

    def step(self, x_t: Tensor, state: GSAState) -> tuple[Tensor, GSAState]:
        y, state = self._mix(x_t.unsqueeze(1), state, gsa_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return 2 * self.num_heads * self.num_slots * self.head_dim  # = 2 * m * d_model
