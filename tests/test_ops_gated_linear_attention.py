"""Chunked gated linear attention == token recurrence == quadratic form, forward and backward."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from recallkit.ops import gated_linear_attention as gla_module

GATES = ["vector", "scalar"]


def qkvg(gate: str, B=2, H=2, T=23, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, Dk, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    shape = (B, H, T, Dk) if gate == "vector" else (B, H, T)
    g = -F.softplus(torch.randn(*shape, generator=gen, dtype=dtype)) * strength  # log-decays <= 0
    return q, k, v, g


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize(("chunk_size", "sub_chunk_size"),
                         [(1, 8), (4, 2), (7, 8), (12, 4), (23, 8), (64, 16), (64, 8)])
def test_chunked_equals_recurrent_and_quadratic(gate, chunk_size, sub_chunk_size, vector_gate_path):
    q, k, v, g = qkvg(gate)
    y_rec, s_rec = ops.gated_linear_attention_recurrent(q, k, v, g)
    y_chunk, s_chunk = ops.gated_linear_attention_chunked(
        q, k, v, g, chunk_size=chunk_size, sub_chunk_size=sub_chunk_size
    )
    torch.testing.assert_close(y_chunk, y_rec)
    torch.testing.assert_close(s_chunk, s_rec)
    torch.testing.assert_close(ops.gated_linear_attention_quadratic(q, k, v, g), y_rec)
    assert s_rec.shape == (2, 2, 5, 3)


def test_scalar_gate_is_the_vector_gate_broadcast():
    q, k, v, g = qkvg("scalar")
    y_scalar, s_scalar = ops.gated_linear_attention_chunked(q, k, v, g, chunk_size=8)
    y_vector, s_vector = ops.gated_linear_attention_chunked(q, k, v, g[..., None].expand_as(q), chunk_size=8)
    torch.testing.assert_close(y_scalar, y_vector)
    torch.testing.assert_close(s_scalar, s_vector)


@pytest.mark.parametrize("gate", GATES)
def test_zero_gate_is_plain_linear_attention(gate):
    q, k, v, g = qkvg(gate)
    y, s = ops.gated_linear_attention_chunked(q, k, v, torch.zeros_like(g), chunk_size=8)
    y_ref, s_ref = ops.linear_attention_recurrent(q, k, v, normalize=False)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("gate", GATES)
def test_strong_decays_stay_finite_in_float32(gate):
    # chunk-total log-decays reach ~ -64 * 20: the naive q*exp(c), k*exp(-c) trick would overflow
    q, k, v, g = (t.requires_grad_() for t in qkvg(gate, T=100, dtype=torch.float32, strength=20.0))
    y_rec, s_rec = ops.gated_linear_attention_recurrent(q, k, v, g)
    y_chunk, s_chunk = ops.gated_linear_attention_chunked(q, k, v, g, chunk_size=64)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(s_chunk).all()
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s_chunk, s_rec, atol=1e-5, rtol=1e-4)
    (y_chunk.sum() + s_chunk.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, g))


def test_sub_chunk_gemm_equals_the_exact_masked_form(monkeypatch):
    # decays inside a sub-chunk below the limit take the GEMM through the sub-chunk's reference;
    # forcing the limit below zero takes the exact (sub, sub, Dk) form for the same inputs
    q, k, v, g = qkvg("vector", T=24)
    assert (-g).sum(dim=2).amax() < gla_module._DIAG_GEMM_MAX_DECAY  # so the default took the GEMM
    monkeypatch.setattr(gla_module, "_WHOLE_CHUNK_GEMM", False)
    y_gemm, s_gemm = ops.gated_linear_attention_chunked(q, k, v, g, chunk_size=16, sub_chunk_size=8)
    monkeypatch.setattr(gla_module, "_DIAG_GEMM_MAX_DECAY", -1.0)
    y_exact, s_exact = ops.gated_linear_attention_chunked(q, k, v, g, chunk_size=16, sub_chunk_size=8)
    torch.testing.assert_close(y_gemm, y_exact)
    torch.testing.assert_close(s_gemm, s_exact)


def test_a_chunk_with_small_decays_is_scored_as_one_gemm():
    # within _DIAG_GEMM_MAX_DECAY nats the whole chunk is one sub-chunk (one (C, C) GEMM); stronger
    # decays, or fixed_paths (no value read), take sub-chunks of the largest divisor <= the target
    _, _, _, g = qkvg("vector", T=16)
    cum = g.reshape(2, 2, 1, 16, 5).cumsum(dim=3)  # (B, H, N, C, Dk), one chunk
    assert (-cum).amax() < gla_module._DIAG_GEMM_MAX_DECAY < (-100 * cum).amax()
    assert gla_module._sub_chunk_for(cum, 6) == 16
    assert gla_module._sub_chunk_for(100 * cum, 6) == 4
    with ops.numerics.fixed_paths():
        assert gla_module._sub_chunk_for(cum, 6) == 4


def test_one_gemm_per_chunk_is_accurate_in_float32_up_to_its_bound():
    # chunk decays of 34-38 nats (exp(-c) up to e^38 in the GEMM): float32 output and gradients still
    # match the float64 token loop, and the whole-chunk path is the one taken
    q, k, v, _ = qkvg("vector", T=32, seed=7)
    g = -(38.0 / 16) * (0.9 + 0.1 * torch.rand(q.shape, generator=torch.Generator().manual_seed(8),
                                               dtype=q.dtype))
    cum = g.reshape(2, 2, 2, 16, 5).cumsum(dim=3)
    assert gla_module._sub_chunk_for(cum, 4) == 16 and (-cum).amax() > 34
    results = []
    for dtype in (torch.float64, torch.float32):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v, g)]
        kernel = ops.gated_linear_attention_recurrent if dtype == torch.float64 else functools.partial(
            ops.gated_linear_attention_chunked, chunk_size=16, sub_chunk_size=4)
        y, s = kernel(*inputs)
        ((y * y.detach().cos()).sum() + s.sum()).backward()
        results.append([y, s, *(t.grad for t in inputs)])
    for exact, fast in zip(*results, strict=True):
        torch.testing.assert_close(fast.double(), exact.double(), atol=1e-5, rtol=1e-4)


def test_fixed_paths_take_the_exact_form_without_reading_a_value():
    # the same small decays that take the GEMM by default take the exact form inside fixed_paths;
    # there the choice reads no tensor value, which is what lets vmap batch the kernel
    _, _, _, g = qkvg("vector", T=16)
    cum = g.reshape(2, 2, 1, 16, 5).cumsum(dim=3)  # (B, H, N, C, Dk), one chunk
    assert gla_module._VectorGateScores(cum, 8).gemm
    with ops.numerics.fixed_paths():
        assert not gla_module._VectorGateScores(cum, 8).gemm
    members = [qkvg("vector", T=24, seed=seed) for seed in range(3)]
    chunked = functools.partial(ops.gated_linear_attention_chunked, chunk_size=16, sub_chunk_size=8)
    expected = torch.stack([chunked(*inputs)[0] for inputs in members])
    with ops.numerics.fixed_paths():  # over a leading member axis, as packed training runs it
        batched = torch.func.vmap(lambda *a: chunked(*a)[0])(*map(torch.stack, zip(*members)))
    torch.testing.assert_close(batched, expected)


@pytest.mark.parametrize("gate", GATES)
def test_chunked_resumes_from_a_state(gate):
    q, k, v, g = qkvg(gate)
    y_full, s_full = ops.gated_linear_attention_recurrent(q, k, v, g)
    head, tail = (tuple(t[:, :, sl] for t in (q, k, v, g)) for sl in (slice(0, 9), slice(9, None)))
    _, s_head = ops.gated_linear_attention_chunked(*head, chunk_size=4)
    y_tail, s_tail = ops.gated_linear_attention_chunked(*tail, chunk_size=4, state=s_head)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)
    y_tail_rec, s_tail_rec = ops.gated_linear_attention_recurrent(*tail, state=s_head)
    torch.testing.assert_close(y_tail_rec, y_tail)
    torch.testing.assert_close(s_tail_rec, s_tail)


@pytest.mark.parametrize("gate", GATES)
def test_gradients_agree(gate, vector_gate_path):
    grads = []
    for form in ("recurrent", "chunked", "quadratic"):
        q, k, v, g = (t.requires_grad_() for t in qkvg(gate, T=13, seed=3))
        if form == "recurrent":
            y, s = ops.gated_linear_attention_recurrent(q, k, v, g)
        elif form == "chunked":
            y, s = ops.gated_linear_attention_chunked(q, k, v, g, chunk_size=8, sub_chunk_size=4)
        else:
            y, s = ops.gated_linear_attention_quadratic(q, k, v, g), None
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
        if s is not None:  # the final state's gradient path too (absent from the quadratic form)
            loss = loss + (s * torch.linspace(1, -1, s.numel(), dtype=s.dtype).view_as(s)).sum()
        loss.backward()
        grads.append((form, [q.grad, k.grad, v.grad, g.grad]))
    _, reference = grads[0]
    _, chunked = grads[1]
    for a, b in zip(reference, chunked):
        torch.testing.assert_close(a, b)
    # the quadratic form has no final-state term: compare it to the recurrence on y alone
    q, k, v, g = (t.requires_grad_() for t in qkvg(gate, T=13, seed=3))
    y = ops.gated_linear_attention_recurrent(q, k, v, g)[0]
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    for a, b in zip([q.grad, k.grad, v.grad, g.grad], grads[2][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("gate", GATES)
def test_gradcheck_chunked(gate, vector_gate_path):
    q, k, v, g = qkvg(gate, B=1, H=1, T=7, Dk=3, Dv=2, seed=5)
    s0 = torch.randn(1, 1, 3, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (q, k, v, g, s0))
    torch.autograd.gradcheck(
        lambda q, k, v, g, s: ops.gated_linear_attention_chunked(q, k, v, g, chunk_size=4, state=s,
                                                                 sub_chunk_size=2),
        inputs,
    )


def test_bad_gate_shape_is_a_clear_error():
    q, k, v, g = qkvg("vector")
    with pytest.raises(ValueError, match="gate g must be"):
        ops.gated_linear_attention_chunked(q, k, v, g[..., :2])


@pytest.mark.parametrize(("kwargs", "message"), [({"chunk_size": 0}, "chunk_size must be >= 1"),
                                                 ({"sub_chunk_size": 0}, "sub_chunk_size must be >= 1")])
def test_bad_chunk_sizes_are_a_clear_error(kwargs, message):
    q, k, v, g = qkvg("vector")
    with pytest.raises(ValueError, match=message):
        ops.gated_linear_attention_chunked(q, k, v, g, **kwargs)
