"""GSA (Gated Slot Attention, arXiv 2409.07146) against its paper's equations, typed out as plain tensor
code over the mixer's own weights, one token at a time, in float64: no kernel from ``recallkit.ops``,
no mixer helper. K~_t = Diag(a_t) K~_{t-1} + (1 - a_t) k_t^T, V~_t = Diag(a_t) V~_{t-1} + (1 - a_t) v_t^T,
o_t = V~_t^T softmax(K~_t q_t), a_t = sigmoid(W_a x_t)^(1/tau), q, k, v = Swish(W x_t),
y_t = W_o RMSNorm(Swish(o_t))."""

from __future__ import annotations

import functools

import pytest
import torch

import recallkit as rk
from recallkit.mixers import build_mixer
from tests.test_references_mixers import D, F64, T, TOL, randomize, make as make_mixer

make = functools.partial(make_mixer, "gsa")


def swish(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def softmax(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max())
    return e / e.sum()


def reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """The paper's layer, token by token, per head: m slots of keys and values, forgotten at
    a_t = sigmoid(W_a x_t)^(1/tau) and written with weight 1 - a_t, read by a softmax over the slots."""
    cfg = mixer.config
    H, m, tau = cfg.num_heads, cfg.num_slots, cfg.gate_temperature
    dh = D // H
    Wq, Wk, Wv = mixer.qkv.weight.split(D)  # each (D, D)
    Wa, Wo, w_norm = mixer.forget.weight, mixer.out.weight, mixer.norm.weight
    B, T_, _ = x.shape
    y = torch.zeros(B, T_, D, dtype=F64)
    for b in range(B):
        K = [torch.zeros(m, dh, dtype=F64) for _ in range(H)]
        V = [torch.zeros(m, dh, dtype=F64) for _ in range(H)]
        for t in range(T_):
            x_t = x[b, t]
            q, k, v = swish(Wq @ x_t), swish(Wk @ x_t), swish(Wv @ x_t)
            alpha = (1 / (1 + torch.exp(-(Wa @ x_t)))) ** (1 / tau)  # (H * m,)
            o = []
            for h in range(H):
                a, sl = alpha[h * m:(h + 1) * m], slice(h * dh, (h + 1) * dh)
                K[h] = torch.diag(a) @ K[h] + torch.outer(1 - a, k[sl])
                V[h] = torch.diag(a) @ V[h] + torch.outer(1 - a, v[sl])
                o.append(V[h].T @ softmax(K[h] @ q[sl]))
            o = swish(torch.cat(o))
            o = o / torch.sqrt((o**2).mean() + 1e-5) * w_norm  # RMSNorm over the full width
            y[b, t] = Wo @ o
    return y


@pytest.mark.parametrize("kwargs", [
    {"num_heads": 1, "num_slots": 4, "chunk_size": 4},
    {"num_heads": 2, "num_slots": 3, "chunk_size": 5, "gate_temperature": 2.0},
    {"num_heads": 4, "chunk_size": 64},  # the default 64 slots, one chunk
])
def test_gsa_is_the_gated_slot_recurrence(kwargs):
    mixer = make(**kwargs)
    randomize(mixer, scale=0.3)
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        expected = reference(mixer, x)
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_step, state = [], mixer.init_state(2, x.device, F64)
        for t in range(T):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), expected, **TOL)


def test_gsa_state_is_two_m_by_d_model_whatever_the_heads():
    for heads in (1, 2, 4):
        mixer = make(num_heads=heads, num_slots=16)
        assert mixer.state_size(1000) == 2 * 16 * D


def test_gsa_config_refuses_bad_values():
    with pytest.raises(ValueError, match="num_slots"):
        rk.MIXERS["gsa"].Config(name="gsa", num_slots=0)
    with pytest.raises(ValueError, match="gate_temperature"):
        rk.MIXERS["gsa"].Config(name="gsa", gate_temperature=-1.0)
    with pytest.raises(ValueError, match="extra"):
        rk.MIXERS["gsa"].Config(name="gsa", slots=4)
    with pytest.raises(ValueError, match="divisible|multiple"):
        build_mixer(D, rk.MIXERS["gsa"].Config(name="gsa", num_heads=3))
