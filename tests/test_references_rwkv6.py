"""RWKV-6 Finch time mixing against its paper's equations (arXiv 2404.05892, eq. 14-22), typed out as
plain tensor code over the mixer's own weights, one token at a time, in float64: no kernel from
``recallkit.ops``, no mixer helper. The released init's constants are recomputed from its formulas."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.test_references_mixers import D, F64, T, TOL, randomize, make as make_mixer

make = functools.partial(make_mixer, "rwkv6")


def group_norm(o: torch.Tensor, weight, bias, eps: float) -> torch.Tensor:
    """o (H, dh) of one token: each head normalised over its channels, then the affine per channel."""
    mean = o.mean(-1, keepdim=True)
    var = ((o - mean) ** 2).mean(-1, keepdim=True)
    return ((o - mean) / torch.sqrt(var + eps)).reshape(-1) * weight + bias


def reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """The paper's block, token by token: ddlerp (eq. 14-15), decay (eq. 16-17), r, k, v, g (eq. 18-21),
    wkv_t = Diag(u) k_t^T v_t + sum_{i<t} Diag(prod_{j=i+1}^{t-1} w_j) k_i^T v_i and the output (eq. 22),
    the wkv sum carried as its recurrence s_t = Diag(w_t) s_{t-1} + k_t^T v_t."""
    H = mixer.config.num_heads
    dh = D // H
    B, T_, _ = x.shape
    R = mixer.config.mix_rank
    A = mixer.mix_down.weight.T.view(D, 5, R)  # A_□ = A[:, i], □ in w, k, v, r, g
    y = torch.zeros_like(x)
    for b in range(B):
        s = torch.zeros(H, dh, dh, dtype=F64)
        prev = torch.zeros(D, dtype=F64)
        for t in range(T_):
            a, bb = x[b, t], prev

            def ddlerp(i):  # a + (b - a) ⊙ (λ_□ + tanh((a + (b - a) ⊙ μ_x) A_□) B_□)
                lora = mixer.mix_base[i] + torch.tanh((a + (bb - a) * mixer.mu_x) @ A[:, i]) @ mixer.mix_up[i]
                return a + (bb - a) * lora

            xw, xk, xv, xr, xg = (ddlerp(i) for i in range(5))
            d = mixer.decay_base + torch.tanh(xw @ mixer.decay_down.weight.T) @ mixer.decay_up.weight.T
            w = torch.exp(-torch.exp(d)).view(H, dh)
            r, k, v = (z @ lin.weight.T for z, lin in ((xr, mixer.receptance), (xk, mixer.key),
                                                       (xv, mixer.value)))
            g = xg @ mixer.gate.weight.T
            r, k, v = r.view(H, dh), k.view(H, dh), v.view(H, dh)
            o = torch.zeros(H, dh, dtype=F64)
            for h in range(H):
                kv = torch.outer(k[h], v[h])
                wkv = torch.diag(mixer.bonus[h]) @ kv + s[h]
                o[h] = r[h] @ wkv
                s[h] = torch.diag(w[h]) @ s[h] + kv
            normed = group_norm(o, mixer.norm.weight, mixer.norm.bias, 64e-5)
            y[b, t] = (g * torch.sigmoid(g) * normed) @ mixer.out.weight.T
            prev = a
    return y


@pytest.mark.parametrize("kwargs", [
    {"num_heads": 1, "chunk_size": 4},
    {"num_heads": 2, "mix_rank": 3, "decay_rank": 5, "chunk_size": 4},
    {"num_heads": 4, "chunk_size": 64},
])
def test_rwkv6_is_the_finch_time_mixing(kwargs):
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
        torch.testing.assert_close(state.shift, x[:, -1])


def test_rwkv6_init_is_the_released_one_at_mid_depth():
    mixer = make(num_heads=4)
    n = torch.arange(D, dtype=F64)
    ddd, ramp = n / D, n / (D - 1)
    torch.testing.assert_close(mixer.mu_x, 1 - ddd ** 0.5)
    torch.testing.assert_close(mixer.mix_base[2], 1 - (ddd ** 0.5 + 0.15))  # λ_v
    torch.testing.assert_close(mixer.mix_base[3], 1 - ddd ** 0.25)  # λ_r
    torch.testing.assert_close(mixer.decay_base, -6 + 5 * ramp ** 1.35)
    torch.testing.assert_close(mixer.bonus.reshape(-1), 0.5 * (1 - ramp) + ((n + 1) % 3 - 1) * 0.1)
    w = torch.exp(-torch.exp(mixer.decay_base))
    assert 0.99 < w[0] < 1 and 0.6 < w[-1] < 0.7  # slow channels first, fast last


def test_rwkv6_state_is_matrix_per_head_plus_shift_tail():
    mixer = make(num_heads=4)
    assert mixer.state_size(1000) == 4 * 4 * 4 + D  # d^2 / H + d
