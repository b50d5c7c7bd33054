"""Every kernel's token loop (the spec its chunked forms are tested against) against its paper's update
typed out here, element by element, in float64. With the chunked == recurrent tests of each
tests/test_ops_*.py this ties every fast form to the formula, not only to the other forms. The (gated)
delta rule's is tests/test_ops_delta_rule.py::test_recurrence_is_the_delta_rule, KDA's
tests/test_ops_kda.py::test_kda_recurrence_is_the_paper_update; the feature maps' and each mixer's are
in tests/test_references_mixers.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from recallkit import ops
from recallkit.ops.diagonal_ssm import diagonal_ssm_conv, diagonal_ssm_recurrent, h3_ssm_recurrent
from recallkit.ops.long_conv import causal_conv_reference, fft_causal_conv
from recallkit.ops.short_conv import short_conv, short_conv_recurrent

F64 = torch.float64
B, H, T = 2, 2, 9


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_is_the_normalised_sum_over_the_past(normalize):
    """y_t = sum_{s<=t} (q_t.k_s) v_s / sum_{s<=t} q_t.k_s (Katharopoulos et al. 2020, eq. 5)."""
    q, k = rand(B, H, T, 3, seed=1).exp(), rand(B, H, T, 3, seed=2).exp()  # positive features
    v = rand(B, H, T, 4, seed=3)
    y, _ = ops.linear_attention_recurrent(q, k, v, normalize=normalize)
    y_chunk, _ = ops.linear_attention_chunked(q, k, v, normalize=normalize, chunk_size=4)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                num = sum((q[b, h, t] @ k[b, h, s]) * v[b, h, s] for s in range(t + 1))
                den = sum(q[b, h, t] @ k[b, h, s] for s in range(t + 1))
                expected = num / (den + 1e-6) if normalize else num
                torch.testing.assert_close(y[b, h, t], expected)
                torch.testing.assert_close(y_chunk[b, h, t], expected)


@pytest.mark.parametrize("gate", ["scalar", "vector"])
def test_gated_linear_attention_decays_each_past_term_by_the_gates_since(gate):
    """y_t = sum_{s<=t} sum_d q_td k_sd prod_{s<r<=t} a_rd v_s with a = exp(g) (GLA eq. 3; scalar:
    RetNet / SSD)."""
    q, k, v = rand(B, H, T, 3, seed=1), rand(B, H, T, 3, seed=2), rand(B, H, T, 4, seed=3)
    g = -rand(B, H, T, seed=4).abs() if gate == "scalar" else -rand(B, H, T, 3, seed=4).abs()
    y, S = ops.gated_linear_attention_recurrent(q, k, v, g)
    a = g.exp() if gate == "vector" else g.exp()[..., None].expand(B, H, T, 3)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                expected = torch.zeros(4, dtype=F64)
                for s in range(t + 1):
                    decay = torch.ones(3, dtype=F64)
                    for r in range(s + 1, t + 1):
                        decay = decay * a[b, h, r]
                    expected += (q[b, h, t] * k[b, h, s] * decay).sum() * v[b, h, s]
                torch.testing.assert_close(y[b, h, t], expected)


def test_selective_scan_is_zoh_a_euler_b():
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t h_t + D x_t per channel (Mamba eq. 2, 4)."""
    Dn, N = 3, 4
    x, dt = rand(B, T, Dn, seed=1), rand(B, T, Dn, seed=2).abs()
    A, Bm, Cm, D = -rand(Dn, N, seed=3).abs(), rand(B, T, N, seed=4), rand(B, T, N, seed=5), rand(Dn, seed=6)
    y, h_end = ops.selective_scan_recurrent(x, dt, A, Bm, Cm, D)
    for b in range(B):
        for d in range(Dn):
            h = torch.zeros(N, dtype=F64)
            for t in range(T):
                h = torch.tensor([math.exp(dt[b, t, d] * A[d, n]) for n in range(N)], dtype=F64) * h \
                    + dt[b, t, d] * Bm[b, t] * x[b, t, d]
                torch.testing.assert_close(y[b, t, d], h @ Cm[b, t] + D[d] * x[b, t, d])
            torch.testing.assert_close(h_end[b, d], h)


def test_diagonal_ssm_and_its_fft_kernel_are_the_recurrence():
    """x_t = exp(dt A) x_{t-1} + B u_t, y_t = C^T x_t, i.e. y = K * u with
    K[l] = sum_n C_n exp(l dt A_n) B_n (S4D)."""
    C_, N = 3, 4
    u = rand(B, C_, T, seed=1)
    A, Bv, Cv = -rand(C_, N, seed=2).abs(), rand(C_, N, seed=3), rand(C_, N, seed=4)
    dt = rand(C_, seed=5).abs()
    y, _ = diagonal_ssm_recurrent(u, A, Bv, Cv, dt)
    y_fft, _ = diagonal_ssm_conv(u, A, Bv, Cv, dt)
    for c in range(C_):
        K = [sum(Cv[c, n] * math.exp(lag * dt[c] * A[c, n]) * Bv[c, n] for n in range(N)) for lag in range(T)]
        for t in range(T):
            expected = sum(K[t - s] * u[:, c, s] for s in range(t + 1))
            torch.testing.assert_close(y[:, c, t], expected)
            torch.testing.assert_close(y_fft[:, c, t], expected)


def test_h3_memory_is_the_ssm_over_kv_outer_products_read_by_q():
    """S_t[n] = exp(dt A_n) S_{t-1}[n] + B_n k_t v_t^T; y_t = q_t^T (sum_n C_n S_t[n] + D k_t v_t^T)."""
    N, d = 3, 2
    q, k, v = rand(B, H, T, d, seed=1), rand(B, H, T, d, seed=2), rand(B, H, T, d, seed=3)
    A, Bv, Cv = -rand(H, N, seed=4).abs(), rand(H, N, seed=5), rand(H, N, seed=6)
    dt, D = rand(H, seed=7).abs(), rand(H, seed=8)
    y, _ = h3_ssm_recurrent(q, k, v, A, Bv, Cv, dt, D)
    y_chunk, _ = ops.h3_ssm_chunked(q, k, v, A, Bv, Cv, dt, D, chunk_size=4)
    for b in range(B):
        for h in range(H):
            for t in range(T):
                # unrolled: sum over s <= t of (q_t . k_s) v_s weighted by K[t - s] (+ D at lag 0)
                expected = torch.zeros(d, dtype=F64)
                for s in range(t + 1):
                    K = sum(Cv[h, n] * Bv[h, n] * math.exp((t - s) * dt[h] * A[h, n]) for n in range(N))
                    expected += (K + (D[h] if s == t else 0)) * (q[b, h, t] @ k[b, h, s]) * v[b, h, s]
                torch.testing.assert_close(y[b, h, t], expected)
                torch.testing.assert_close(y_chunk[b, h, t], expected)


def test_convolutions_are_their_sums():
    x, w, bias = rand(B, T, 3, seed=1), rand(3, 4, seed=2), rand(3, seed=3)
    for form in (short_conv, short_conv_recurrent):
        y, tail = form(x, w, bias)
        for t in range(T):  # y_t = b + sum_i w_i x_{t-K+1+i}
            expected = bias + sum(w[:, i] * x[:, t - 3 + i] for i in range(4) if t - 3 + i >= 0)
            torch.testing.assert_close(y[:, t], expected)
        torch.testing.assert_close(tail, x[:, -3:].transpose(1, 2))
    u, h = rand(B, 3, T, seed=4), rand(3, T + 2, seed=5)
    for form in (fft_causal_conv, causal_conv_reference):
        y = form(u, h)
        for t in range(T):  # y_t = sum_{s<=t} h[t - s] u_s
            torch.testing.assert_close(y[..., t], sum(h[:, t - s] * u[..., s] for s in range(t + 1)))

