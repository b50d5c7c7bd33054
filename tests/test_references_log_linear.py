"""Log-linear Mamba-2 (Guo et al. 2025, arXiv 2506.04761, sections 3.1 and 3.3) against the paper's
equations typed out with the mixer's own weights, in float64: for each query t the prefix is split into
the Fenwick buckets of t (least-significant-set-bit peeling), and
y_t = sum_l lam_t^(l) sum_{s in bucket l} (a_{s+1} ... a_t) (C_t . B_s) dt_s x_s + D x_t,
then the Mamba-2 gated RMSNorm and out_proj. No kernel from ``recallkit.ops``, no mixer helper."""

from __future__ import annotations

import pytest
import torch

from tests.test_references_mixers import (
    D,
    F64,
    TOL,
    causal_conv_taps,
    inputs,
    make,
    randomize,
    rms_norm,
    silu,
    softplus,
)


def fenwick_buckets(t: int) -> list[tuple[int, list[int]]]:
    """(level, tokens) of query t: level 0 = [t]; then the remaining prefix [0, r), r = t, loses its
    most recent lssb(r) tokens as the bucket of level log2(lssb(r)) + 1, until nothing is left."""
    buckets, r = [(0, [t])], t
    while r > 0:
        low = r & -r  # the least significant set bit of r
        buckets.append((low.bit_length(), list(range(r - low, r))))
        r -= low
    return buckets


def log_linear_reference(mixer, x: torch.Tensor) -> torch.Tensor:
    cfg, B, T_ = mixer.config, *x.shape[:2]
    Dn, N, P = cfg.expand * D, cfg.d_state, cfg.head_dim
    H = Dn // P
    proj = x @ mixer.in_proj.weight.T
    z, xbc, dt = proj[..., :Dn], proj[..., Dn : 2 * Dn + 2 * N], proj[..., 2 * Dn + 2 * N :]
    xbc = silu(causal_conv_taps(xbc, mixer.conv_weight, mixer.conv_bias))
    xs, Bm, Cm = xbc[..., :Dn].view(B, T_, H, P), xbc[..., Dn : Dn + N], xbc[..., Dn + N :]
    dt = softplus(dt + mixer.dt_bias)  # (B, T, H)
    log_a = dt * -torch.exp(mixer.A_log)  # (B, T, H): log a_t = dt_t A_h
    lam = softplus(x @ mixer.level_proj.weight.T).view(B, T_, H, cfg.num_levels)
    y = torch.zeros(B, T_, H, P, dtype=F64)
    for b in range(B):
        for h in range(H):
            for t in range(T_):
                for level, bucket in fenwick_buckets(t):
                    weight = lam[b, t, h, min(level, cfg.num_levels - 1)]  # higher levels share the last
                    for s in bucket:
                        decay = torch.exp(log_a[b, s + 1 : t + 1, h].sum())  # a_{s+1} ... a_t
                        y[b, t, h] += weight * decay * (Cm[b, t] @ Bm[b, s]) * dt[b, s, h] * xs[b, s, h]
                y[b, t, h] += mixer.D[h] * xs[b, t, h]
    y = rms_norm(y.reshape(B, T_, Dn) * silu(z), mixer.norm_weight, 1e-5)
    return y @ mixer.out_proj.weight.T


@pytest.mark.parametrize("kwargs", [{"chunk_size": 4},
                                    {"d_state": 4, "head_dim": 8, "expand": 1, "d_conv": 2, "num_levels": 3,
                                     "chunk_size": 3}])
def test_log_linear_is_mamba2_over_the_fenwick_buckets(kwargs):
    mixer, x = make("log_linear", **kwargs), inputs(length=13)
    randomize(mixer, scale=0.2)
    with torch.no_grad():
        expected = log_linear_reference(mixer, x)
        torch.testing.assert_close(mixer(x), expected, **TOL)
        state = mixer.init_state(2, x.device, F64)
        steps = []
        for t in range(x.shape[1]):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t)
        torch.testing.assert_close(torch.stack(steps, 1), expected, **TOL)


def test_the_buckets_tile_the_prefix_in_at_most_log_levels():
    for t in range(70):
        buckets = fenwick_buckets(t)
        assert sorted(s for _, bucket in buckets for s in bucket) == list(range(t + 1))
        assert len(buckets) <= max(t, 1).bit_length() + 1  # the paper's ceil(log2 t) + 1, level 0 included
        assert all(len(bucket) == 2 ** max(level - 1, 0) for level, bucket in buckets)


@pytest.mark.parametrize("T", [1, 2, 7, 8, 13, 64, 1023, 1024])
def test_state_holds_one_mamba2_state_per_level_slot(T):
    # floor(log2 T) + 1 slots, the dead levels (clear bits of T) included: O(log T), not popcount(T)
    mixer = make("log_linear", d_state=4, head_dim=8, expand=1)
    mamba2 = make("mamba2", d_state=4, head_dim=8, expand=1)
    ssm = mamba2.num_heads * 4 * 8
    slots = {1: 1, 2: 2, 7: 3, 8: 4, 13: 4, 64: 7, 1023: 10, 1024: 11}[T]
    assert mixer.state_size(T) - mamba2.state_size(T) == (slots - 1) * ssm
