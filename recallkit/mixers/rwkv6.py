"""RWKV-6 "Finch" time mixing (Peng, Goldstein, Anthony, et al. 2024, "Eagle and Finch: RWKV with
Matrix-Valued States and Dynamic Recurrence", arXiv 2404.05892, section 4.2, eq. 14-22).

Per head, S_t = Diag(w_t) S_{t-1} + k_t v_t^T and o_t = r_t^T (S_{t-1} + Diag(u) k_t v_t^T): the
state is read before the current token is written, and the current token enters through the learnt
bonus u (one per head and key channel). The block, from the paper's equations:
- data-dependent token shift: lora_□(x) = λ_□ + tanh(x A_□) B_□ and
  ddlerp_□(a, b) = a + (b - a) ⊙ lora_□(a + (b - a) ⊙ μ_x) with a = x_t, b = x_{t-1}, for
  □ in {w, k, v, r, g} (A_□ of rank ``mix_rank``, 32 in the paper);
- the decay d_t = lora_d(ddlerp_w(x_t, x_{t-1})) (rank ``decay_rank``, 64 in the paper),
  w_t = exp(-exp(d_t)) in (0, 1) per channel;
- r_t, k_t, v_t, g_t = ddlerp_□(x_t, x_{t-1}) W_□;
- y_t = (SiLU(g_t) ⊙ GroupNorm_h(o_t)) W_o, GroupNorm one group per head.
d_k = d_v = d_model / H; the state per layer is S (H, d_k, d_v) plus the token-shift tail x_{t-1}:
H * d_k * d_v + d_model = d_model^2 / H + d_model numbers (plus d_model * (K - 1) for the tails of a
``short_conv`` of K taps, counted by its wrapper). Training and prefill use ``recallkit.ops.rwkv6``:
the chunked vector-gate linear attention with k, v and the log-decay shifted one token later, plus
the bonus term.

Deviations from the paper and its released code (RWKV-LM v6):
- only the time-mixing block: the RWKV channel-mix FFN is out of scope (recallkit's ``ModelConfig.mlp``
  option builds the FFN of every block);
- d_k = d_v = d_model / H (the paper fixes the head size at 64);
- the released code's init depends on the layer's depth (ratio_0_to_1 = l / (L - 1),
  ratio_1_to_almost0 = 1 - l / L); a mixer does not know its depth, so both ratios are fixed at 0.5
  (a middle layer). Its LoRA down-projections A start at zero there; here A and B both start
  uniform in [-0.01, 0.01], so every parameter gets a gradient from the first step (ddlerp and the
  decay still start at their λ's up to ~1e-3). W_r, W_k, W_v, W_g, W_o use PyTorch's default init;
- the GroupNorm eps is the released code's 64e-5 (1e-5 * head_size_divisor^2 with divisor 8);
- the first token of a sequence shifts in x_0 = 0 (the released code's zero-padded time shift).
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
from recallkit.mixers.base import Mixer
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.rwkv6 import rwkv6_chunked, rwkv6_recurrent

MIXED = 5  # ddlerp targets, in this order: w, k, v, r, g
MID_DEPTH = 0.5  # the released init's depth ratios, fixed at a middle layer


class RWKV6Config(MixerConfig):
    """RWKV-6 time mixing: ddlerp token shift, low-rank data-dependent decay, bonus u, GroupNorm,
    SiLU gate."""

    name: Literal["rwkv6"] = "rwkv6"
    num_heads: int = Field(default=4, gt=0)
    mix_rank: int = Field(default=32, gt=0, description="rank of the ddlerp LoRAs A_□ B_□ (paper: 32)")
    decay_rank: int = Field(default=64, gt=0, description="rank of the decay LoRA A_d B_d (paper: 64)")
    chunk_size: int = Field(default=64, gt=0)

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)


@dataclass
class RWKV6State:
    """Recurrent state of one RWKV-6 layer."""

    wkv: Tensor  # (B, H, d_k, d_v), float32+: S
    shift: Tensor  # (B, D): the last input token x_{t-1}, for the token shift


def _released_init(D: int, H: int) -> dict[str, Tensor]:
    """The released code's init of μ_x, the λ's, the decay base λ_d and the bonus u at MID_DEPTH."""
    ddd = torch.arange(D) / D  # (D,)
    ramp = torch.arange(D) / max(D - 1, 1)
    base = 1 - ddd ** MID_DEPTH
    lam = torch.stack([base, base, 1 - (ddd ** MID_DEPTH + 0.3 * MID_DEPTH),  # w, k, v
                       1 - ddd ** (0.5 * MID_DEPTH), 1 - ddd ** (0.5 * MID_DEPTH)])  # r, g: (5, D)
    decay = -6 + 5 * ramp ** (0.7 + 1.3 * MID_DEPTH)  # d in [-6, -1]: w from 0.9975 down to 0.69
    bonus = MID_DEPTH * (1 - ramp) + ((torch.arange(D) + 1) % 3 - 1) * 0.1
    return {"mu_x": base, "mix_base": lam, "decay_base": decay, "bonus": bonus.view(H, D // H)}


class RWKV6(Mixer):
    """RWKV-6 time mixing; its state is :class:`RWKV6State` (S in float32, the shift tail)."""

    Config = RWKV6Config

    def __init__(self, d_model: int, config: RWKV6Config) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        D, H = d_model, config.num_heads
        self.num_heads, self.head_dim = H, D // H
        init = _released_init(D, H)
        self.mu_x = nn.Parameter(init["mu_x"])  # (D,)
        self.mix_base = nn.Parameter(init["mix_base"])  # (5, D): λ_w, λ_k, λ_v, λ_r, λ_g
        self.mix_down = nn.Linear(D, MIXED * config.mix_rank, bias=False)  # A_□ side by side
        self.mix_up = nn.Parameter(torch.empty(MIXED, config.mix_rank, D))  # B_□, (5, R, D)
        self.decay_base = nn.Parameter(init["decay_base"])  # (D,): λ_d
        self.decay_down = nn.Linear(D, config.decay_rank, bias=False)  # A_d
        self.decay_up = nn.Linear(config.decay_rank, D, bias=False)  # B_d
        self.bonus = nn.Parameter(init["bonus"])  # (H, d_k): u
        for weight in (self.mix_down.weight, self.mix_up, self.decay_down.weight, self.decay_up.weight):
            nn.init.uniform_(weight, -0.01, 0.01)
        for p in (self.mu_x, self.mix_base, self.decay_base, self.bonus):
            p._no_weight_decay = True  # as the released code's time_* parameters
        self.receptance, self.key, self.value, self.gate = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.norm = nn.GroupNorm(H, D, eps=64e-5)  # one group per head
        self.out = nn.Linear(D, D, bias=False)

    def _ddlerp(self, x: Tensor, x_prev: Tensor) -> list[Tensor]:
        """The five ddlerp_□(x_t, x_{t-1}), each (B, T, D), in the order w, k, v, r, g."""
        B, T, D = x.shape
        dx = x_prev - x  # b - a
        lora = torch.tanh(self.mix_down(x + dx * self.mu_x))  # tanh(. A_□)
        lora = lora.view(B, T, MIXED, self.config.mix_rank)
        mix = self.mix_base + torch.einsum("btfr,frd->btfd", lora, self.mix_up)  # (B, T, 5, D)
        return list((x[:, :, None] + dx[:, :, None] * mix).unbind(2))

    def _mix(self, x: Tensor, state: RWKV6State | None, kernel) -> tuple[Tensor, RWKV6State]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` an RWKV-6 form."""
        B, T, D = x.shape
        H, dh = self.num_heads, self.head_dim
        prev = x.new_zeros(B, D) if state is None else state.shift.to(x.dtype)
        x_prev = torch.cat([prev[:, None], x], dim=1)[:, :T]  # (B, T, D): x_{t-1}
        xw, xk, xv, xr, xg = self._ddlerp(x, x_prev)
        d = self.decay_base + self.decay_up(torch.tanh(self.decay_down(xw)))  # (B, T, D)
        g = -torch.exp(d.to(compute_dtype(x)))  # log w_t = -exp(d_t) <= 0, float32+

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)

        r, k, v = heads(self.receptance(xr)), heads(self.key(xk)), heads(self.value(xv))
        o, wkv = kernel(r, k, v, heads(g), self.bonus, state=None if state is None else state.wkv)
        o = self.norm(o.transpose(1, 2).reshape(B * T, D)).view(B, T, D)  # GroupNorm_h per token
        y = self.out(F.silu(self.gate(xg)) * o)
        return y, RWKV6State(wkv, x[:, -1] if T else prev)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: RWKV6State | None = None):
        chunked = functools.partial(rwkv6_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RWKV6State:
        wkv = torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim, device=device,
                          dtype=compute_dtype(dtype))
        return RWKV6State(wkv, torch.zeros(batch_size, self.d_model, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: RWKV6State) -> tuple[Tensor, RWKV6State]:
        y, state = self._mix(x_t.unsqueeze(1), state, rwkv6_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * self.head_dim + self.d_model
