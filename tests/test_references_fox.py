"""FoX (Lin, Nikishin, He, Courville 2025, arXiv 2503.02130) against its paper's equations, written out
as a token loop over the mixer's own weights, in float64:

o_i = sum_{j<=i} softmax_j(q_i^T k_j / sqrt(d_h) + log prod_{l=j+1..i} f_l) v_j,
f_t = sigmoid(w_f^T x_t + b_f), and the Pro block: k'_t = a_t k_{t-1} + (1 - a_t) k_t (likewise v),
QK-norm, y = W_o(sigmoid(W_g x) ⊙ RMSNorm_h(o)).
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.test_references_mixers import D, F64, TOL, inputs, linear, make, randomize, sigmoid

EPS = 1e-6  # the Pro block's RMSNorm eps (the released code's)


def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + EPS) * weight


def fox_reference(mixer, x: torch.Tensor) -> torch.Tensor:
    cfg, (B, T, _) = mixer.config, x.shape
    H = cfg.num_heads
    dh = D // H
    q, k, v = (t.reshape(B, T, H, dh) for t in (x @ mixer.qkv.weight.T).split(D, dim=-1))
    f = sigmoid(linear(x, mixer.forget))  # (B, T, H): one forget gate per head and token
    if cfg.pro:
        a = sigmoid(x @ mixer.shift.weight.T)  # (B, T, 2H): key shift gates, then value shift gates
        k_s, v_s = torch.zeros_like(k), torch.zeros_like(v)
        for t in range(T):
            k_prev = k[:, t - 1] if t else torch.zeros_like(k[:, 0])
            v_prev = v[:, t - 1] if t else torch.zeros_like(v[:, 0])
            k_s[:, t] = a[:, t, :H, None] * k_prev + (1 - a[:, t, :H, None]) * k[:, t]
            v_s[:, t] = a[:, t, H:, None] * v_prev + (1 - a[:, t, H:, None]) * v[:, t]
        q, k, v = rms(q, mixer.q_norm), rms(k_s, mixer.k_norm), v_s
    o = torch.zeros(B, T, H, dh, dtype=F64)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                logits = []
                for j in range(i + 1):
                    forget = torch.prod(f[b, j + 1 : i + 1, h])  # prod_{l=j+1..i} f_l (1 for j = i)
                    logits.append(q[b, i, h] @ k[b, j, h] / math.sqrt(dh) + torch.log(forget))
                w = torch.softmax(torch.stack(logits), dim=0)
                o[b, i, h] = sum(w[j] * v[b, j, h] for j in range(i + 1))
    if cfg.pro:
        o = rms(o, mixer.out_norm).reshape(B, T, D) * sigmoid(x @ mixer.gate.weight.T)
    return o.reshape(B, T, D) @ mixer.out.weight.T


@pytest.mark.parametrize("kwargs", [
    {"chunk_size": 4},
    {"num_heads": 4, "chunk_size": 3},
    {"num_heads": 2, "pro": True, "chunk_size": 5},
    {"num_heads": 1, "pro": True, "chunk_size": 64},
], ids=["h1", "h4", "pro-h2", "pro-h1-one-chunk"])
def test_fox_is_softmax_attention_with_the_forget_gate_bias(kwargs):
    mixer, x = make("fox", **kwargs), inputs()
    randomize(mixer, scale=0.3)
    with torch.no_grad():
        expected = fox_reference(mixer, x)
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_step, state = [], mixer.init_state(x.shape[0], x.device, F64)
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), expected, **TOL)


def test_fox_cache_holds_the_decay_towards_the_last_token():
    # per cached token j and head: log prod_{l=j+1..T} f_l, the paper's D_Tj = c_T - c_j
    mixer, x = make("fox", num_heads=4), inputs()
    randomize(mixer, scale=0.3)
    with torch.no_grad():
        _, state = mixer.prefill(x)
        f = sigmoid(linear(x, mixer.forget))  # (B, T, H)
        expected = torch.stack([torch.log(torch.prod(f[:, j + 1 :], dim=1)) for j in range(x.shape[1])], -1)
        torch.testing.assert_close(state.cache.decay, expected, **TOL)  # (B, H, T)


def test_fox_with_open_forget_gates_is_nope_softmax_attention():
    # f = 1 (a large b_f, no w_f): D = 0 and FoX is plain causal softmax attention without positions
    mixer, x = make("fox", num_heads=2), inputs()
    with torch.no_grad():
        mixer.forget.weight.zero_()
        mixer.forget.bias.fill_(60.0)
        q, k, v = (t.reshape(2, -1, 2, D // 2).transpose(1, 2) for t in (x @ mixer.qkv.weight.T).split(D, -1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // 2)
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, -1, D)
        torch.testing.assert_close(mixer(x), o @ mixer.out.weight.T, **TOL)
