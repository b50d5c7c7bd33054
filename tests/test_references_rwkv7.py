"""RWKV-7 (Peng, Zhang, Goldstein, et al. 2025, arXiv 2503.14456, section 4) against its equations typed
out token by token, in the paper's orientation (wkv is d_v x d_k, vectors are rows), over the mixer's own
weights: no recallkit kernel or mixer helper. float64, so agreement is ~1e-10."""

from __future__ import annotations

import functools

import math

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from tests.test_references_mixers import D, F64, T, TOL, randomize, sigmoid, make as make_mixer

make = functools.partial(make_mixer, "rwkv7")

GROUP_NORM_EPS = 64e-5  # the released code's ln_x eps, 1e-5 * 8^2


def lin(x: torch.Tensor, layer) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """y_t from the paper's equations, one token at a time from the empty state."""
    B, T_, _ = x.shape
    H = mixer.config.num_heads
    N = D // H
    mu = {n: mixer.mu[n] for n in ("r", "w", "k", "v", "a", "g")}
    y = torch.zeros(B, T_, D, dtype=F64)
    for b in range(B):
        wkv = torch.zeros(H, N, N, dtype=F64)  # per head d_v x d_k
        prev = torch.zeros(D, dtype=F64)
        for t in range(T_):
            xt = x[b, t]
            lerp = {n: xt + (prev - xt) * m for n, m in mu.items()}  # token shift
            prev = xt
            r, k, v = (lerp[n] @ layer.weight.T for n, layer in
                       (("r", mixer.receptance), ("k", mixer.key), ("v", mixer.value)))
            d = lin(torch.tanh(lerp["w"] @ mixer.decay_down.weight.T), mixer.decay_up)
            w = torch.exp(-math.exp(-0.5) * sigmoid(d))  # decay in (exp(-e^-0.5), 1)
            a = sigmoid(lin(lerp["a"] @ mixer.a_down.weight.T, mixer.a_up))  # in-context learning rate
            g = sigmoid(lerp["g"] @ mixer.gate_down.weight.T) @ mixer.gate_up.weight.T
            kappa = k * mixer.removal_scale  # removal key, normalised per head below
            k_rep = k * (1 + (a - 1) * mixer.replacement_rate)  # replacement key, k ⊙ lerp(1, a, alpha)
            p = torch.zeros(D, dtype=F64)
            for h in range(H):
                s = slice(h * N, (h + 1) * N)
                kh = kappa[s] / kappa[s].norm()
                transition = torch.diag(w[s]) - torch.outer(kh, a[s] * kh)  # Diag(w) - kappa^T (a ⊙ kappa)
                wkv[h] = wkv[h] @ transition + torch.outer(v[s], k_rep[s])
                o = wkv[h] @ r[s]
                normed = (o - o.mean()) / torch.sqrt(o.var(unbiased=False) + GROUP_NORM_EPS)
                normed = normed * mixer.norm.weight[s] + mixer.norm.bias[s]
                bonus = (r[s] * k_rep[s] * mixer.bonus[h]).sum() * v[s]  # (r ⊙ k~ ⊙ rho) summed, times v
                p[s] = normed + bonus
            y[b, t] = (p * g) @ mixer.out.weight.T
    return y


@pytest.mark.parametrize("kwargs", [
    {"num_heads": 1, "chunk_size": 4},
    {"num_heads": 2, "decay_rank": 3, "a_rank": 5, "gate_rank": 4, "chunk_size": 4},
    {"num_heads": 4, "chunk_size": 64},
])
def test_rwkv7_is_the_papers_generalised_delta_rule(kwargs):
    mixer = make(**kwargs)
    randomize(mixer, scale=0.3)
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        expected = reference(mixer, x)
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_head, state = mixer.prefill(x[:, :5])
        y_step = [y_head]
        for t in range(5, T):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t[:, None])
        torch.testing.assert_close(torch.cat(y_step, 1), expected, **TOL)


def test_rwkv7_init_as_the_released_code_for_one_layer():
    mixer = make(num_heads=4)
    decay = torch.exp(-math.exp(-0.5) * sigmoid(mixer.decay_up.bias))
    assert 0.89 < decay.min() < 0.9 and decay.max() > 0.999  # memories of ~10 to ~1000 tokens
    torch.testing.assert_close(mixer.decay_up.bias[[0, -1]], torch.tensor([-6.5, -1.5], dtype=F64))
    assert (mixer.removal_scale.float() == 0.85).all() and (mixer.replacement_rate == 1).all()
    assert not mixer.bonus.any() and not mixer.a_up.bias.any()
    assert mixer.state_size(100) == D * D // 4 + D


def test_rwkv7_config_rejects_bad_values():
    with pytest.raises(ValidationError, match="num_heads"):
        rk.MIXERS["rwkv7"].Config(name="rwkv7", num_heads=0)
    with pytest.raises(ValidationError, match="extra"):
        rk.MIXERS["rwkv7"].Config(name="rwkv7", value_residual=True)
    with pytest.raises(ValueError, match="not divisible by rwkv7 num_heads=3"):
        make(num_heads=3)
