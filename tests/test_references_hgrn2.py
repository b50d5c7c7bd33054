"""HGRN2 against its paper's recurrence (arXiv 2404.07904, section 3), typed out as plain tensor code
over the mixer's own weights, one token at a time, in float64: no kernel from ``recallkit.ops``, no
mixer helper. HGRN2 has no kernel of its own (it runs on the gated linear attention kernels), so this
is also the check that the GLA reading (q = o, k = 1 - f, v = i, g = log f) is the paper's update."""

from __future__ import annotations

import functools

import pytest
import torch

import recallkit as rk
from tests.test_references_mixers import D, F64, T, TOL, sigmoid, make as make_mixer

make = functools.partial(make_mixer, "hgrn2")


def reference(mixer, x: torch.Tensor, beta: float) -> torch.Tensor:
    """HGRU2: f_t = beta + (1 - beta) sigmoid(x W_f + b_f), i_t = SiLU(x W_i + b_i),
    o_t = sigmoid(x W_o + b_o); per head of n channels h_t = Diag(f_t) h_{t-1} + (1 - f_t)^T i_t
    (n x n), y_t = o_t h_t; then LayerNorm over d and the output projection."""
    n = mixer.config.expand_ratio
    H = D // n
    W, b = mixer.in_proj.weight, mixer.in_proj.bias  # rows: W_i, W_o, W_f
    Wi, Wo, Wf = W[:D], W[D:2 * D], W[2 * D:]
    bi, bo, bf = b[:D], b[D:2 * D], b[2 * D:]
    B, T_, _ = x.shape
    y = torch.zeros_like(x)
    for bb in range(B):
        h = torch.zeros(H, n, n, dtype=F64)
        for t in range(T_):
            xt = x[bb, t]
            f = (beta + (1 - beta) * sigmoid(Wf @ xt + bf)).view(H, n)
            a = Wi @ xt + bi
            i = (a * sigmoid(a)).view(H, n)
            o = sigmoid(Wo @ xt + bo).view(H, n)
            out = torch.zeros(H, n, dtype=F64)
            for hh in range(H):
                h[hh] = torch.diag(f[hh]) @ h[hh] + torch.outer(1 - f[hh], i[hh])
                out[hh] = o[hh] @ h[hh]
            z = out.reshape(D)
            z = (z - z.mean()) / torch.sqrt(z.var(unbiased=False) + mixer.norm.eps)
            z = z * mixer.norm.weight + mixer.norm.bias
            y[bb, t] = mixer.out.weight @ z + mixer.out.bias
    return y


@pytest.mark.parametrize("kwargs", [
    {"expand_ratio": 16, "chunk_size": 4},
    {"expand_ratio": 4, "chunk_size": 5},
    {"expand_ratio": 8, "lower_bound": 0.6, "chunk_size": 64},
])
def test_hgrn2_is_the_paper_recurrence(kwargs):
    mixer = make(**kwargs)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    x = torch.randn(2, T, D, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        expected = reference(mixer, x, kwargs.get("lower_bound", 0.0))
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_step, state = [], mixer.init_state(2, x.device, F64)
        for t in range(T):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), expected, **TOL)


def test_hgrn2_state_is_d_times_expand_ratio():
    for n in (4, 16):
        mixer = make(expand_ratio=n)
        assert mixer.state_size(1000) == D * n
        assert mixer.init_state(1, torch.device("cpu"), F64).shape == (1, D // n, n, n)


def test_hgrn2_lower_bound_floors_the_forget_gate():
    mixer = make(expand_ratio=4, lower_bound=0.9)
    log_f, key = mixer._gates(torch.tensor([-50.0, 0.0, 50.0], dtype=F64))
    torch.testing.assert_close(log_f.exp(), torch.tensor([0.9, 0.95, 1.0], dtype=F64))
    torch.testing.assert_close(key, 1 - log_f.exp())


def test_hgrn2_bad_config_is_one_line():
    with pytest.raises(ValueError, match="expand_ratio"):
        rk.MIXERS["hgrn2"].Config(name="hgrn2", expand_ratio=5).check_width(D)
    with pytest.raises(ValueError, match="lower_bound"):
        rk.MIXERS["hgrn2"].Config(name="hgrn2", lower_bound=1.0)
