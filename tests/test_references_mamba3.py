"""Mamba-3 (SISO) against its paper's equations (arXiv 2603.15569: the exponential-trapezoidal recurrence
and the complex-valued SSM), typed out as plain tensor code over the mixer's own weights, one token at a
time, in float64: no kernel from ``recallkit.ops``, no mixer helper.

The reference keeps the state complex, as the paper's complex SSM does, and never rotates B or C: the
first S channel pairs of B, C and h are complex numbers b_{2i} + i b_{2i+1}, and each step multiplies the
complex state (and the trapezoid's previous-token term) by exp(-i pi tanh(theta_t) dt_t). The mixer uses
the equivalent real "RoPE" form (B_t, C_t rotated by cumulative angles); agreement checks that trick,
the trapezoid and the chunked kernel together.
"""

from __future__ import annotations

import functools

import math

import pytest
import torch

import recallkit as rk
from tests.test_references_mixers import D, F64, T, TOL, randomize, rms_norm, softplus, make as make_mixer

make = functools.partial(make_mixer, "mamba3")


def as_complex(v: torch.Tensor, S: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) real -> S complex numbers v_{2i} + i v_{2i+1} and the N - 2S real channels after them."""
    return torch.complex(v[0 : 2 * S : 2], v[1 : 2 * S : 2]), v[2 * S :]


def reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """h_t = e^{dt_t (A_t - i w_t)} h_{t-1} + (1 - lam_t) dt_t e^{dt_t (A_t - i w_t)} B_{t-1} x_{t-1}^T
    + lam_t dt_t B_t x_t^T with w_t = pi tanh(theta_t) on the S complex channels (w = 0 on the real
    ones), y_t = Re(C_t^H h_t) + D x_t, then y ⊙ SiLU(z) and out_proj."""
    cfg = mixer.config
    B, T_, _ = x.shape
    Dn, N, P = cfg.expand * D, cfg.d_state, cfg.head_dim
    H, S = Dn // P, int(N * cfg.rope_fraction) // 2
    proj = x @ mixer.in_proj.weight.T
    z, xs, Bm, Cm, dt, a, lam, theta = proj.split([Dn, Dn, N, N, H, H, H, S], dim=-1)
    dt = softplus(dt + mixer.dt_bias)  # (B, T, H)
    A = -torch.clamp(softplus(a), min=cfg.A_floor)
    lam = 1 / (1 + torch.exp(-lam))
    Bm, Cm = rms_norm(Bm, mixer.b_norm_weight, 1e-5), rms_norm(Cm, mixer.c_norm_weight, 1e-5)  # QK-norm
    y = torch.zeros(B, T_, H, P, dtype=F64)
    for b in range(B):
        for h in range(H):
            hc = torch.zeros(S, P, dtype=torch.complex128)  # complex channels of the state
            hr = torch.zeros(N - 2 * S, P, dtype=F64)  # real channels
            prev_c = torch.zeros(S, dtype=torch.complex128)  # the previous token's B and x (none yet)
            prev_r, prev_x = torch.zeros(N - 2 * S, dtype=F64), torch.zeros(P, dtype=F64)
            for t in range(T_):
                Bt, Ct = Bm[b, t] + mixer.b_bias[h], Cm[b, t] + mixer.c_bias[h]
                bc, br = as_complex(Bt, S)
                cc, cr = as_complex(Ct, S)
                xt, d, lt = xs[b, t, h * P : (h + 1) * P], dt[b, t, h], lam[b, t, h]
                decay = torch.exp(d * A[b, t, h])
                turn = torch.exp(-1j * math.pi * torch.tanh(theta[b, t]) * d)  # (S,)
                hc = (decay * turn[:, None] * (hc + (1 - lt) * d * torch.outer(prev_c, prev_x + 0j))
                      + lt * d * torch.outer(bc, xt + 0j))
                hr = decay * (hr + (1 - lt) * d * torch.outer(prev_r, prev_x)) + lt * d * torch.outer(br, xt)
                y[b, t, h] = (cc.conj() @ hc).real + cr @ hr + mixer.D[h] * xt
                prev_c, prev_r, prev_x = bc, br, xt
    gated = y.reshape(B, T_, Dn) * z / (1 + torch.exp(-z))
    return gated @ mixer.out_proj.weight.T


@pytest.mark.parametrize("kwargs", [
    {"chunk_size": 4},
    {"d_state": 8, "head_dim": 8, "expand": 1, "rope_fraction": 1.0, "chunk_size": 64},
    {"d_state": 6, "head_dim": 4, "chunk_size": 5},  # S = 1: channels 2..5 stay real
])
def test_mamba3_is_the_trapezoidal_complex_ssm(kwargs):
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


def test_mamba3_init_is_the_released_one():
    mixer = make(dt_min=1e-3, dt_max=0.1, expand=4, head_dim=2)  # 32 heads
    dt = softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)
    assert (mixer.b_bias == 1).all() and (mixer.c_bias == 1).all() and mixer.b_bias.shape == (32, 16)
    assert (mixer.D == 1).all() and (mixer.b_norm_weight == 1).all()


def test_mamba3_state_is_h_the_last_token_and_the_angle():
    mixer = make(d_state=16)  # H = 2 heads of P = 16, S = 4 angles
    assert mixer.state_size(100) == 2 * 16 * 16 + 2 * 16 + 2 * 16 + 2 * 4
    with pytest.raises(ValueError, match="rotates no channel pair"):
        rk.MIXERS["mamba3"].Config(name="mamba3", d_state=2)
