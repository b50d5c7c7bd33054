"""Longhorn against its paper's update (arXiv 2407.14207, section 3) inside Mamba's block, typed out as
plain tensor code over the mixer's own weights, one token and one channel at a time, in float64: no
kernel from ``recallkit.ops``, no mixer helper."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.test_references_mixers import D, F64, T, TOL, randomize, silu, make as make_mixer

make = functools.partial(make_mixer, "longhorn")


def reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """in_proj -> (x, z); depthwise causal conv of K taps + SiLU; x_proj -> (low, k, q);
    beta = sigmoid(W_beta low + b); per channel d: Δ = β_d / (1 + β_d k^T k),
    s_d <- (1 - Δ k^2) ⊙ s_d + Δ x_d k, y_d = s_d^T q + D_d x_d; out_proj(y ⊙ SiLU(z))."""
    cfg = mixer.config
    B, T_, _ = x.shape
    Dn, N, K = cfg.expand * D, cfg.d_state, cfg.d_conv
    R = mixer.x_proj.weight.shape[0] - 2 * N
    xz = x @ mixer.in_proj.weight.T
    xi, z = xz[..., :Dn], xz[..., Dn:]
    out = torch.zeros(B, T_, D, dtype=F64)
    for b in range(B):
        S = torch.zeros(Dn, N, dtype=F64)
        for t in range(T_):
            xc = mixer.conv_bias.clone()
            for i in range(K):  # y_t = bias + sum_i w[:, i] x_{t - K + 1 + i}
                if t - K + 1 + i >= 0:
                    xc = xc + mixer.conv_weight[:, i] * xi[b, t - K + 1 + i]
            xc = silu(xc)
            proj = mixer.x_proj.weight @ xc
            low, k, q = proj[:R], proj[R : R + N], proj[R + N :]
            beta = 1 / (1 + torch.exp(-(mixer.beta_proj.weight @ low + mixer.beta_proj.bias)))
            y = torch.zeros(Dn, dtype=F64)
            for d in range(Dn):
                delta = beta[d] / (1 + beta[d] * (k * k).sum())
                S[d] = (1 - delta * k * k) * S[d] + delta * xc[d] * k
                y[d] = S[d] @ q + mixer.D[d] * xc[d]
            out[b, t] = mixer.out_proj.weight @ (y * silu(z[b, t]))
    return out


@pytest.mark.parametrize("kwargs", [{"chunk_size": 4},
                                    {"d_state": 4, "d_conv": 2, "expand": 1, "dt_rank": 3, "chunk_size": 5}])
def test_longhorn_is_the_online_learning_update_in_mambas_block(kwargs):
    mixer = make(**kwargs)
    randomize(mixer, scale=0.2)
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), reference(mixer, x), **TOL)


def test_longhorn_has_no_A_and_starts_with_beta_near_one_half():
    mixer = make()
    names = {name for name, _ in mixer.named_parameters()}
    assert not any("A" in name or "dt" in name for name in names), names
    assert not mixer.beta_proj.bias.any()  # zero, as in the released code: beta = sigmoid(W low)
    assert mixer.state_size(100) == 2 * D * (4 - 1 + 16)  # d_inner (d_conv - 1 + d_state)
