"""Chunked (WY / UT transform) delta rule == token recurrence, with and without the gate, forward and
backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops

GATES = [False, True]


def qkvbg(gated: bool, B=2, H=2, T=23, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    k = F.normalize(torch.randn(B, H, T, Dk, generator=gen, dtype=dtype), dim=-1)  # unit keys
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    beta = torch.sigmoid(torch.randn(B, H, T, generator=gen, dtype=dtype))
    g = -F.softplus(torch.randn(B, H, T, generator=gen, dtype=dtype)) * strength if gated else None
    return q, k, v, beta, g


@pytest.mark.parametrize("gated", GATES)
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])
def test_chunked_equals_recurrent(gated, chunk_size):
    q, k, v, beta, g = qkvbg(gated)
    y_rec, s_rec = ops.delta_rule_recurrent(q, k, v, beta, g)
    y_chunk, s_chunk = ops.delta_rule_chunked(q, k, v, beta, g, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec)
    torch.testing.assert_close(s_chunk, s_rec)
    assert s_rec.shape == (2, 2, 5, 3)


def test_recurrence_is_the_delta_rule():
    # the spec, written as the matrix update S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T
    q, k, v, beta, g = qkvbg(True, B=1, H=1, T=6)
    S = torch.randn(5, 3, dtype=torch.float64)
    y, s = ops.delta_rule_recurrent(q, k, v, beta, g, state=S[None, None])
    eye = torch.eye(5, dtype=torch.float64)
    for t in range(6):
        k_t, b_t = k[0, 0, t], beta[0, 0, t]
        S = g[0, 0, t].exp() * (eye - b_t * torch.outer(k_t, k_t)) @ S + b_t * torch.outer(k_t, v[0, 0, t])
        torch.testing.assert_close(y[0, 0, t], S.T @ q[0, 0, t])
    torch.testing.assert_close(s[0, 0], S)


def test_beta_one_overwrites_the_value_under_a_unit_key():
    q, k, v, _, _ = qkvbg(False, T=9)
    beta = torch.ones(k.shape[:3], dtype=k.dtype)
    _, s = ops.delta_rule_chunked(q, k, v, beta, chunk_size=4)
    torch.testing.assert_close(torch.einsum("bhk,bhkv->bhv", k[:, :, -1], s), v[:, :, -1])


def test_zero_gate_is_plain_deltanet():
    q, k, v, beta, g = qkvbg(True)
    y, s = ops.delta_rule_chunked(q, k, v, beta, torch.zeros_like(g), chunk_size=8)
    y_ref, s_ref = ops.delta_rule_recurrent(q, k, v, beta)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("gated", GATES)
def test_chunked_resumes_from_a_state(gated):
    q, k, v, beta, g = qkvbg(gated)
    y_full, s_full = ops.delta_rule_recurrent(q, k, v, beta, g)
    head = [None if t is None else t[:, :, :9] for t in (q, k, v, beta, g)]
    tail = [None if t is None else t[:, :, 9:] for t in (q, k, v, beta, g)]
    _, s_head = ops.delta_rule_chunked(*head, chunk_size=4)
    y_tail, s_tail = ops.delta_rule_chunked(*tail, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)
    y_rec_tail, _ = ops.delta_rule_recurrent(*tail, state=s_head)
    torch.testing.assert_close(y_rec_tail, y_full[:, :, 9:])


@pytest.mark.parametrize("gated", GATES)
def test_gradients_agree(gated):
    grads = []
    for chunk_size in (None, 4, 13):
        inputs = [t.requires_grad_() for t in qkvbg(gated, T=13, seed=3) if t is not None]
        state = torch.randn(2, 2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        state.requires_grad_()
        args = (*inputs, None) if not gated else tuple(inputs)
        if chunk_size is None:
            y, s = ops.delta_rule_recurrent(*args, state=state)
        else:
            y, s = ops.delta_rule_chunked(*args, chunk_size=chunk_size, state=state)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        ((y * weights).sum() + s.square().sum()).backward()
        grads.append([t.grad for t in (*inputs, state)])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("gated", GATES)
def test_gradcheck_chunked(gated):
    inputs = [t.requires_grad_() for t in qkvbg(gated, B=1, H=1, T=6, Dk=3, Dv=2, seed=5) if t is not None]

    def f(q, k, v, beta, g=None):
        y, s = ops.delta_rule_chunked(q, k, v, beta, g, chunk_size=4)
        return y, s

    torch.autograd.gradcheck(f, tuple(inputs))


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_strong_decays_stay_finite_in_float32(chunk_size):
    q, k, v, beta, g = (t.requires_grad_() for t in qkvbg(True, T=100, dtype=torch.float32, strength=20.0))
    y_rec, s_rec = ops.delta_rule_recurrent(q, k, v, beta, g)
    y_chunk, s_chunk = ops.delta_rule_chunked(q, k, v, beta, g, chunk_size=chunk_size)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(s_chunk).all()
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-4)
    y_chunk.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, beta, g))


@pytest.mark.parametrize("chunk_size", [32, 64])  # the default and the previous one
def test_float32_long_sequence_matches_float64(chunk_size):
    q, k, v, beta, g = qkvbg(True, B=1, H=2, T=300, Dk=16, Dv=8, strength=0.05)
    y64, s64 = ops.delta_rule_recurrent(q, k, v, beta, g)
    y32, s32 = ops.delta_rule_chunked(*(t.float() for t in (q, k, v, beta, g)), chunk_size=chunk_size)
    assert s32.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32, s64.float(), atol=1e-4, rtol=1e-4)


def test_empty_sequence_and_bad_shapes():
    q, k, v, beta, g = qkvbg(True, T=0)
    y, s = ops.delta_rule_chunked(q, k, v, beta, g)
    assert y.shape == (2, 2, 0, 3) and s.shape == (2, 2, 5, 3) and not s.any()
    q, k, v, beta, g = qkvbg(True, T=4)
    with pytest.raises(ValueError, match="beta"):
        ops.delta_rule_chunked(q, k, v, beta[..., None], g)


@pytest.mark.parametrize("gated", GATES)
@pytest.mark.parametrize("grad", [False, True])
def test_in_place_work_never_touches_the_inputs(gated, grad):
    """The chunked form updates its own (C, C) scores in place; the caller's tensors stay as they were."""
    inputs = [t for t in qkvbg(gated, dtype=torch.float32) if t is not None]
    state = torch.randn(2, 2, 5, 3)
    tensors = [*inputs, state]
    for t in tensors:
        t.requires_grad_(grad)
    copies, versions = [t.detach().clone() for t in tensors], [t._version for t in tensors]
    with torch.set_grad_enabled(grad):
        y, s = ops.delta_rule_chunked(*inputs[:4], inputs[4] if gated else None, state=state, chunk_size=4)
        if grad:
            (y.sum() + s.sum()).backward()
    for t, copy, version in zip(tensors, copies, versions):
        assert torch.equal(t.detach(), copy) and t._version == version


def test_vmap_over_the_gates_alone_in_fixed_paths():
    """Under torch.func the gates may be batched where the keys are not: the products are then fresh."""
    q, k, v, beta, g = qkvbg(True)
    gs = torch.stack([g, 2 * g, 0.5 * g])
    with ops.numerics.fixed_paths():
        ys, _ = torch.func.vmap(lambda g_: ops.delta_rule_chunked(q, k, v, beta, g_, chunk_size=4))(gs)
    for y, g_ in zip(ys, gs):
        torch.testing.assert_close(y, ops.delta_rule_recurrent(q, k, v, beta, g_)[0])
