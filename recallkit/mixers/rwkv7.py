"""RWKV-7 "Goose" time mixing (Peng, Zhang, Goldstein, et al. 2025, "RWKV-7 'Goose' with Expressive
Dynamic State Evolution", arXiv 2503.14456, section 4).

Per head, in the paper's orientation (wkv is d_v x d_k, vectors are rows):
wkv_t = wkv_{t-1} (Diag(w_t) - kappa_t^T (a_t ⊙ kappa_t)) + v_t^T k~_t and o_t = wkv_t r_t^T: the
generalised delta rule, a diagonal-plus-rank-1 transition. Every input is first token-shifted,
x^□_t = x_t + (x_{t-1} - x_t) ⊙ mu_□ for □ in {r, w, k, v, a, g}. Then r = x^r W_r, k = x^k W_k,
v = x^v W_v; the decay w_t = exp(-e^{-0.5} sigmoid(d_t)) in (exp(-e^{-0.5}), 1) per channel with
d_t = w_0 + tanh(x^w W_w1) W_w2; the in-context learning rate a_t = sigmoid(a_0 + x^a W_a1 W_a2) in
(0, 1) per channel; the removal key kappa_t = L2-normalised (k_t ⊙ xi) per head; the replacement key
k~_t = k_t ⊙ (1 + (a_t - 1) ⊙ alpha_k) (the paper's lerp(1, a_t, alpha)); the bonus
u_t = (sum over the head of r_t ⊙ k~_t ⊙ rho) v_t; the output y_t = W_o ((GroupNorm_h(o_t) + u_t) ⊙ g_t)
with the output gate g_t = sigmoid(x^g W_g1) W_g2. Written in recallkit's orientation (S = wkv^T,
d_k x d_v) it is S_t = (Diag(w_t) - (a_t ⊙ kappa_t) kappa_t^T) S_{t-1} + k~_t v_t^T, o_t = S_t^T r_t,
which the DPLR kernels of ``recallkit.ops.rwkv7`` compute (chunked UT transform for training and
prefill, the token loop for steps).
d_k = d_v = d_model / H; the state per layer is S (H, d_k, d_v) plus the token-shift tail x_{t-1}:
H * (d_model / H)^2 + d_model = d_model^2 / H + d_model numbers (plus d_model * (K - 1) for the tails of
a ``short_conv`` of K taps, counted by its wrapper).

Deviations from the paper:
- the value residual (v_t lerped toward the first layer's value v_0 by a low-rank sigmoid gate,
  every layer but the first) needs the first layer's values in every other layer, which recallkit's
  one-layer mixer contract does not pass along: it is dropped, every layer acts as the paper's first;
- the channel-mixing block (RWKV's FFN) is not part of the mixer: the model's ``mlp`` option stands in;
- initialisation follows the released code (train_temp ``RWKV_Tmix_x070``) as a single layer: mu_□ and
  the decay bias w_0 by channel index, xi = 0.85, alpha_k = 1, rho = 0, a_0 = 0, GroupNorm eps
  64e-5, low-rank ranks ``decay_rank``, ``a_rank``, ``gate_rank`` 32 (its suggestion at d_model <= 256);
  except that the low-rank down-projections start random (the released code zeros them, and every
  parameter must receive a gradient at the first step here) with their up-projections scaled by 0.1,
  and r, k, v, o keep PyTorch's default Linear init (the released code zeros W_o, which would silence
  the mixer at initialisation);
- the head size is d_model / H (64 in the paper) and the ``short_conv`` option is off by default
  (RWKV's token shift is its own width-2 convolution).
The bonus reads the replacement key k~, as the released reference code does (``rwkv_v7_numpy.py``: its
``k`` is replaced before the bonus), and the decay is the paper's w = exp(-e^{-0.5} sigmoid(d)), the
released code's exp(-exp(-softplus(-d) - 0.5)) written out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.mixers.base import Mixer
from recallkit.ops.numerics import compute_dtype
from recallkit.ops.rwkv7 import rwkv7_chunked, rwkv7_recurrent

SHIFTED = ("r", "w", "k", "v", "a", "g")  # the token-shifted inputs, one mu each


class RWKV7Config(MixerConfig):
    """RWKV-7 time mixing: the generalised delta rule with per-channel decays and learning rates."""

    name: Literal["rwkv7"] = "rwkv7"
    num_heads: int = Field(default=4, gt=0)
    decay_rank: int = Field(default=32, gt=0, description="rank of the decay projection W_w1 W_w2")
    a_rank: int = Field(default=32, gt=0, description="rank of the learning-rate projection W_a1 W_a2")
    gate_rank: int = Field(default=32, gt=0, description="rank of the output gate W_g1 W_g2")
    chunk_size: int = Field(default=32, gt=0, description="C of the chunked DPLR kernel (32 took "
                            "0.74-0.92x the time of 64 over training and bench shapes, docs/results.md)")

    def check_width(self, d_model: int) -> None:
        self._require_divisible(d_model, self.num_heads)


@dataclass
class RWKV7State:
    """The wkv memory S (B, H, d_k, d_v), float32+, and the last input x_{t-1} (B, D) of the token shift."""

    wkv: Tensor
    last: Tensor


class RWKV7(Mixer):
    """RWKV-7 time mixing; its state is :class:`RWKV7State`."""

    Config = RWKV7Config

    def __init__(self, d_model: int, config: RWKV7Config) -> None:
        config.check_width(d_model)
        super().__init__(d_model, config)
        H = self.num_heads = config.num_heads
        dh = self.head_dim = d_model // H
        D = d_model
        # released-code init for one layer: mu = 1 - (i / D)^p per channel
        ratio = torch.arange(D, dtype=torch.float32) / D
        powers = {"r": 0.2, "w": 0.9, "k": 0.9, "v": 0.4, "a": 0.9, "g": 0.2}
        self.mu = nn.ParameterDict({n: nn.Parameter(1 - ratio ** powers[n]) for n in SHIFTED})
        self.receptance = nn.Linear(D, D, bias=False)  # W_r
        self.key = nn.Linear(D, D, bias=False)  # W_k
        self.value = nn.Linear(D, D, bias=False)  # W_v
        self.decay_down, self.decay_up = self._low_rank(config.decay_rank, bias=True)  # W_w1, W_w2, w_0
        self.a_down, self.a_up = self._low_rank(config.a_rank, bias=True)  # W_a1, W_a2, a_0
        self.gate_down, self.gate_up = self._low_rank(config.gate_rank, bias=False)  # W_g1, W_g2
        with torch.no_grad():  # w_0 = -6.5 .. -1.5 over the channels: decays exp(-e^-0.5 sigmoid(w_0))
            self.decay_up.bias.copy_(-7 + 5 * (torch.arange(D) / max(D - 1, 1)) ** 0.85 + 0.5)
            self.a_up.bias.zero_()
        self.removal_scale = nn.Parameter(torch.full((D,), 0.85))  # xi
        self.replacement_rate = nn.Parameter(torch.ones(D))  # alpha_k
        self.bonus = nn.Parameter(torch.zeros(H, dh))  # rho
        self.bonus._no_weight_decay = True  # a per-head gain, as RWKV-6's bonus u
        self.norm = nn.GroupNorm(H, D, eps=64e-5)  # one group per head
        self.out = nn.Linear(D, D, bias=False)  # W_o

    def _low_rank(self, rank: int, bias: bool) -> tuple[nn.Linear, nn.Linear]:
        down, up = nn.Linear(self.d_model, rank, bias=False), nn.Linear(rank, self.d_model, bias=bias)
        with torch.no_grad():
            up.weight.mul_(0.1)
        return down, up

    def _shifted(self, x: Tensor, last: Tensor) -> dict[str, Tensor]:
        """x^□ = x_t + (x_{t-1} - x_t) ⊙ mu_□, with x_{t-1} of the first token from the state."""
        delta = torch.cat([last.unsqueeze(1).to(x.dtype), x[:, :-1]], dim=1) - x  # (B, T, D)
        return {n: x + delta * self.mu[n] for n in SHIFTED}

    def _mix(self, x: Tensor, state: RWKV7State | None, kernel) -> tuple[Tensor, RWKV7State]:
        """x (B, T, D) -> y (B, T, D) and the state after it, with ``kernel`` a DPLR delta-rule form."""
        B, T, D = x.shape
        H, dh = self.num_heads, self.head_dim
        ct = compute_dtype(x)
        last = x.new_zeros(B, D) if state is None else state.last
        xs = self._shifted(x, last)

        def heads(t: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, dh)
            return t.view(B, T, H, dh).transpose(1, 2)

        r, k, v = self.receptance(xs["r"]), self.key(xs["k"]), self.value(xs["v"])
        d = self.decay_up(torch.tanh(self.decay_down(xs["w"]))).to(ct)
        log_w = -math.exp(-0.5) * torch.sigmoid(d)  # log w_t in (-e^{-0.5}, 0), (B, T, D)
        a = torch.sigmoid(self.a_up(self.a_down(xs["a"])).to(ct))  # in-context learning rate in (0, 1)
        gate = self.gate_up(torch.sigmoid(self.gate_down(xs["g"])))  # (B, T, D)
        kappa = F.normalize(heads(k * self.removal_scale).to(ct), dim=-1)  # unit removal key per head
        k_rep = heads(k.to(ct) * (1 + (a - 1) * self.replacement_rate))  # k~ = k ⊙ lerp(1, a, alpha_k)
        r_h, v_h = heads(r), heads(v)
        # S_t = (Diag(w_t) + (-(a ⊙ kappa)) kappa^T) S_{t-1} + k~ v^T, o_t = S_t^T r_t
        o, wkv = kernel(r_h, k_rep, v_h, -heads(a) * kappa, kappa, heads(log_w),
                        state=None if state is None else state.wkv)  # (B, H, T, dh)
        o = self.norm(o.transpose(1, 2).reshape(B * T, D)).view(B, T, D)  # GroupNorm_h per token
        bonus = (r_h * k_rep * self.bonus[:, None, :]).sum(-1, keepdim=True) * v_h  # (r ⊙ k~ ⊙ rho) 1 v
        o = o + bonus.transpose(1, 2).reshape(B, T, D)
        y = self.out((o * gate).to(x.dtype))
        return y, RWKV7State(wkv, x[:, -1] if T else last)

    def prefill(self, x: Tensor, prefix_len: Tensor | None = None, state: RWKV7State | None = None):
        chunked = functools.partial(rwkv7_chunked, chunk_size=self.config.chunk_size)
        return self._mix(x, state, chunked)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> RWKV7State:
        wkv = torch.zeros(batch_size, self.num_heads, self.head_dim, self.head_dim, device=device,
                          dtype=compute_dtype(dtype))
        return RWKV7State(wkv, torch.zeros(batch_size, self.d_model, device=device, dtype=dtype))

    def step(self, x_t: Tensor, state: RWKV7State) -> tuple[Tensor, RWKV7State]:
        y, state = self._mix(x_t.unsqueeze(1), state, rwkv7_recurrent)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.num_heads * self.head_dim * self.head_dim + self.d_model
