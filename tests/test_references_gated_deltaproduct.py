"""Gated DeltaProduct (Siems et al. 2025, arXiv 2502.10297) against its paper's equations, with the
mixer's own weights, in float64: per token the scalar decay, then the product of n_h generalised
Householder matrices with their writes, S_t = A_t S_{t-1} + B_t, read by o_t = S_t^T q_t."""

from __future__ import annotations

import pytest
import torch

from recallkit.mixers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from recallkit.mixers.gated_deltaproduct import GatedDeltaProduct, GatedDeltaProductConfig
from tests.test_references_mixers import D, F64, TOL, inputs, randomize, rms_norm, sigmoid, silu, softplus


def make(seed: int = 0, **kwargs) -> GatedDeltaProduct:
    torch.manual_seed(seed)
    return GatedDeltaProduct(D, GatedDeltaProductConfig(**kwargs)).to(F64).eval()


def step_projections(mixer, x: torch.Tensor, heads: int, n_h: int):
    """Per step j: W_k^j x, W_v^j x (B, T, H, dh) and W_beta^j x (B, T, H); j = 0 reads Gated
    DeltaNet's own rows of ``qkv`` and ``beta``, j >= 1 the rows of ``extra_kv`` / ``extra_beta``."""
    B, T_, _ = x.shape
    dh = D // heads
    qkv = (x @ mixer.qkv.weight.T).view(B, T_, 3, heads, dh)
    keys, values, betas = [qkv[:, :, 1]], [qkv[:, :, 2]], [x @ mixer.beta.weight.T]
    if n_h > 1:
        kv = (x @ mixer.extra_kv.weight.T).view(B, T_, 2, n_h - 1, heads, dh)  # [keys | values]
        bb = (x @ mixer.extra_beta.weight.T).view(B, T_, n_h - 1, heads)
        for j in range(n_h - 1):
            keys.append(kv[:, :, 0, j])
            values.append(kv[:, :, 1, j])
            betas.append(bb[:, :, j])
    return qkv[:, :, 0], keys, values, betas


def reference(mixer, x: torch.Tensor, heads: int, n_h: int, neg_eigval: bool) -> torch.Tensor:
    B, T_, _ = x.shape
    dh = D // heads
    q_all, keys, values, betas = step_projections(mixer, x, heads, n_h)
    # alpha_t = exp(-softplus(W_a x_t + dt_bias) exp(A_log)), (B, T, H)
    alpha = torch.exp(-softplus(x @ mixer.decay.weight.T + mixer.dt_bias) * torch.exp(mixer.A_log))
    o = torch.zeros(B, T_, heads, dh, dtype=F64)
    eye = torch.eye(dh, dtype=F64)
    for b in range(B):
        for h in range(heads):
            S = torch.zeros(dh, dh, dtype=F64)
            for t in range(T_):
                A, W = alpha[b, t, h] * eye, torch.zeros(dh, dh, dtype=F64)  # transition, writes
                for j in range(n_h):
                    k = silu(keys[j][b, t, h])
                    k = k / k.norm()
                    beta = (2 if neg_eigval else 1) * sigmoid(betas[j][b, t, h])
                    house = eye - beta * torch.outer(k, k)  # generalised Householder H_{t,j}
                    A, W = house @ A, house @ W + beta * torch.outer(k, values[j][b, t, h])
                S = A @ S + W
                q = silu(q_all[b, t, h])
                o[b, t, h] = S.T @ (q / q.norm())
    o = rms_norm(o, mixer.norm.weight, 1e-5).reshape(B, T_, D)  # per head, weight shared
    return (o * silu(x @ mixer.out_gate.weight.T)) @ mixer.out.weight.T


@pytest.mark.parametrize("kwargs", [
    {"num_heads": 1, "num_householder": 2, "chunk_size": 4},
    {"num_heads": 2, "num_householder": 3, "chunk_size": 5, "allow_neg_eigval": True},
    {"num_heads": 4, "num_householder": 2, "chunk_size": 64},
    {"num_heads": 2, "num_householder": 1, "chunk_size": 3},
])
def test_gated_deltaproduct_is_the_householder_product_recurrence(kwargs):
    mixer, x = make(**kwargs), inputs()
    randomize(mixer, scale=0.3)
    expected = reference(mixer, x, kwargs["num_heads"], kwargs["num_householder"],
                         kwargs.get("allow_neg_eigval", False))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_step, state = [], mixer.init_state(x.shape[0], x.device, F64)
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), expected, **TOL)


@pytest.mark.parametrize("heads", [1, 4])
def test_one_householder_step_is_gated_deltanet_with_the_same_weights(heads):
    torch.manual_seed(0)
    gdn = GatedDeltaNet(D, GatedDeltaNetConfig(num_heads=heads, chunk_size=4)).to(F64).eval()
    randomize(gdn, scale=0.3)
    product = make(num_heads=heads, num_householder=1, chunk_size=4)
    product.load_state_dict(gdn.state_dict())  # strict: exactly Gated DeltaNet's parameters
    x = inputs()
    with torch.no_grad():
        (y, s), (y_ref, s_ref) = product.prefill(x), gdn.prefill(x)
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(s, s_ref, atol=1e-12, rtol=1e-12)
        y_t, s_t = product.step(x[:, 0], s)
        y_t_ref, s_t_ref = gdn.step(x[:, 0], s_ref)
        torch.testing.assert_close(y_t, y_t_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(s_t, s_t_ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n_h", [1, 2, 3])
def test_the_state_is_d_squared_over_h_whatever_n_h(n_h):
    mixer = make(num_heads=2, num_householder=n_h)
    _, state = mixer.prefill(inputs())
    assert state.shape == (2, 2, D // 2, D // 2)
    assert mixer.state_size(1000) == state[0].numel() == D * D // 2
    extra = sum(p.numel() for name, p in mixer.named_parameters() if name.startswith("extra_"))
    assert extra == (n_h - 1) * (2 * D * D + 2 * D)  # n_h - 1 more key, value and beta projections


def test_negative_eigenvalues_double_beta():
    plain, neg = make(num_householder=2), make(num_householder=2, allow_neg_eigval=True)
    x = inputs()
    _, _, _, beta = plain._step_inputs(x)
    _, _, _, beta_neg = neg._step_inputs(x)
    torch.testing.assert_close(beta_neg, 2 * beta)
    assert beta_neg.max() > 1  # the paper's beta in [0, 2]: H_{t,j} may reflect (eigenvalue 1 - beta < 0)
