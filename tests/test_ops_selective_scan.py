"""Chunked selective scan == token recurrence, forward and backward, and resumable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from tests.kernel_checks import graph_names


def inputs(B=2, L=23, Dn=5, N=3, seed=0, dtype=torch.float64, dt_scale=1.0):
    """x, dt, A, B, C, D with dt > 0 and A < 0, as the Mamba mixer produces them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, Dn, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(B, L, Dn, generator=g, dtype=dtype) - 1) * dt_scale
    A = -torch.rand(Dn, N, generator=g, dtype=dtype) * 4 - 0.1
    Bm, Cm = (torch.randn(B, L, N, generator=g, dtype=dtype) for _ in range(2))
    D = torch.randn(Dn, generator=g, dtype=dtype)
    return x, dt, A, Bm, Cm, D


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])
def test_chunked_equals_recurrent(chunk_size, skip):
    x, dt, A, Bm, Cm, D = inputs()
    D = D if skip else None
    y_rec, h_rec = ops.selective_scan_recurrent(x, dt, A, Bm, Cm, D)
    y_chunk, h_chunk = ops.selective_scan_chunked(x, dt, A, Bm, Cm, D, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec)
    torch.testing.assert_close(h_chunk, h_rec)
    assert h_rec.shape == (2, 5, 3)


@pytest.mark.parametrize("form", ["recurrent", "chunked"])
def test_resumes_from_a_state(form):
    x, dt, A, Bm, Cm, D = inputs()
    scan = getattr(ops, f"selective_scan_{form}")
    kw = {"chunk_size": 4} if form == "chunked" else {}
    y_full, h_full = ops.selective_scan_recurrent(x, dt, A, Bm, Cm, D)
    y_head, h_head = scan(x[:, :9], dt[:, :9], A, Bm[:, :9], Cm[:, :9], D, **kw)
    y_tail, h_tail = scan(x[:, 9:], dt[:, 9:], A, Bm[:, 9:], Cm[:, 9:], D, state=h_head, **kw)
    torch.testing.assert_close(torch.cat([y_head, y_tail], dim=1), y_full)
    torch.testing.assert_close(h_tail, h_full)


def test_gradients_agree():
    grads = []
    for form, kw in (("recurrent", {}), ("chunked", {"chunk_size": 4}), ("chunked", {"chunk_size": 5})):
        tensors = [t.requires_grad_() for t in inputs(L=13, seed=3)]
        state = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
        state.requires_grad_()
        y, h = getattr(ops, f"selective_scan_{form}")(*tensors, state=state, **kw)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        ((y * weights).sum() + h.square().sum()).backward()
        grads.append([t.grad for t in tensors] + [state.grad])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b)


def test_gradcheck_chunked():
    x, dt, A, Bm, Cm, D = (t.requires_grad_() for t in inputs(B=1, L=6, Dn=2, N=2, seed=5))
    torch.autograd.gradcheck(
        lambda *args: ops.selective_scan_chunked(*args, chunk_size=4)[0], (x, dt, A, Bm, Cm, D)
    )


def test_strong_decay_stays_finite():
    """Large dt * |A| must not overflow: only exponents <= 0 are ever formed."""
    x, dt, A, Bm, Cm, D = inputs(L=40, dt_scale=200.0)
    y_rec, h_rec = ops.selective_scan_recurrent(x, dt, A, Bm, Cm, D)
    y_chunk, h_chunk = ops.selective_scan_chunked(x, dt, A, Bm, Cm, D, chunk_size=16)
    assert torch.isfinite(y_chunk).all() and torch.isfinite(h_chunk).all()
    torch.testing.assert_close(y_chunk, y_rec)
    torch.testing.assert_close(h_chunk, h_rec)


def test_low_precision_inputs_keep_a_float32_state():
    x, dt, A, Bm, Cm, D = (t.to(torch.bfloat16) for t in inputs(dtype=torch.float32))
    y, h = ops.selective_scan_chunked(x, dt, A, Bm, Cm, D, chunk_size=8)
    assert y.dtype == torch.bfloat16 and h.dtype == torch.float32


def test_empty_sequence_returns_the_state():
    x, dt, A, Bm, Cm, D = inputs(L=0)
    state = torch.ones(2, 5, 3, dtype=torch.float64)
    for scan in (ops.selective_scan_recurrent, ops.selective_scan_chunked):
        y, h = scan(x, dt, A, Bm, Cm, D, state=state)
        assert y.shape == (2, 0, 5)
        torch.testing.assert_close(h, state)


def test_long_sequences_run_in_segments_and_equal_the_loop():
    # 700 tokens at chunk 64 exceed one 512-token segment: the state crosses the segment boundary
    x, dt, A, Bm, Cm, D = inputs(B=1, L=700, Dn=4, N=3, seed=2)
    h0 = torch.randn(1, 4, 3, dtype=torch.float64)
    y_rec, h_rec = ops.selective_scan_recurrent(x, dt, A, Bm, Cm, D, state=h0)
    y_chunk, h_chunk = ops.selective_scan_chunked(x, dt, A, Bm, Cm, D, state=h0, chunk_size=64)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(h_chunk, h_rec, atol=1e-12, rtol=1e-12)


def test_gradcheck_chunked_with_state_across_chunks_and_padding():
    """The written-out adjoint (several chunks, a padded last chunk, a start state, both outputs)
    against finite differences."""
    tensors = [t.requires_grad_() for t in inputs(B=2, L=11, Dn=3, N=2, seed=6)]
    state = torch.randn(2, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.autograd.gradcheck(
        lambda *args: ops.selective_scan_chunked(*args[:-1], state=args[-1], chunk_size=4),
        (*tensors, state.requires_grad_()),
    )


def test_training_takes_the_adjoint_and_fixed_paths_the_autograd_steps():
    """With gradients the chunked form runs its own backward; under fixed_paths (vmap, compile)
    autograd records the steps; both give the same gradients."""
    from recallkit.ops.numerics import fixed_paths

    grads = []
    for fixed in (False, True):
        tensors = [t.requires_grad_() for t in inputs(L=30, seed=8)]
        with fixed_paths() if fixed else torch.enable_grad():
            y, h = ops.selective_scan_chunked(*tensors, chunk_size=8)
        state_major = h.grad_fn.next_functions[0][0]  # h is the transpose of the state-major state
        assert ("ChunkedScanBackward" in state_major.name()) != fixed
        (y.sin().sum() + h.square().sum()).backward()
        grads.append([t.grad for t in tensors])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shared", [(), ("A",), ("A", "x", "state")])
def test_packed_members_keep_the_adjoint_and_their_own_gradients(shared):
    """Under vmap over members (packed training: fixed_paths(first_order=True)) the scan keeps its
    written adjoint through its vmap rule (members folded into the batch, one A per sequence), and
    every member's gradients equal the token loop's on that member alone; an input without a member
    axis (here A, x or the state) gets the sum of the members' gradients."""
    from recallkit.ops.numerics import fixed_paths

    names = ("x", "dt", "A", "B", "C", "D", "state")
    members = [(*inputs(B=2, L=19, Dn=4, N=3, seed=20 + k),
                torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(k)))
               for k in range(3)]
    packed = {n: (ts[0] if n in shared else torch.stack(ts)).clone().requires_grad_()
              for n, ts in zip(names, zip(*members))}
    batched = [n for n in names if n not in shared]

    def loss(*args):
        kw = dict(zip(batched, args), **{n: packed[n] for n in shared})
        y, h = ops.selective_scan_chunked(*(kw[n] for n in names[:6]), state=kw["state"], chunk_size=5)
        return y.sin().sum() + h.square().sum(), y

    with fixed_paths(first_order=True):
        losses, y = torch.func.vmap(loss)(*(packed[n] for n in batched))
    assert "_ChunkedScanBackward" in graph_names(y)
    losses.sum().backward()
    reference = {n: torch.zeros_like(t) for n, t in packed.items()}
    for k, member in enumerate(members):
        alone = [(packed[n] if n in shared else t).detach().clone().requires_grad_()
                 for n, t in zip(names, member)]
        y, h = ops.selective_scan_recurrent(*alone[:6], state=alone[6])
        (y.sin().sum() + h.square().sum()).backward()
        for n, t in zip(names, alone):
            if n in shared:
                reference[n] += t.grad
            else:
                reference[n][k] = t.grad
    for n in names:
        torch.testing.assert_close(packed[n].grad, reference[n], atol=1e-10, rtol=1e-10, msg=n)


def test_long_sequences_backward_through_segments_equals_the_loop():
    """Gradients through several 512-token segments (each its own adjoint) and a start state."""
    grads = []
    for form in ("recurrent", "chunked"):
        tensors = [t.requires_grad_() for t in inputs(B=1, L=700, Dn=4, N=3, seed=2)]
        h0 = torch.randn(1, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
        h0.requires_grad_()
        kw = {"chunk_size": 64} if form == "chunked" else {}
        y, h = getattr(ops, f"selective_scan_{form}")(*tensors, state=h0, **kw)
        (y.cos().sum() + h.square().sum()).backward()
        grads.append([t.grad for t in tensors] + [h0.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_a_second_derivative_through_the_adjoint_raises_instead_of_being_wrong():
    """The written adjoint is first order: a backward that builds a graph for a second derivative
    must fail loudly (under fixed_paths autograd's recorded steps give second derivatives)."""
    from recallkit.ops.numerics import fixed_paths

    x, dt, A, Bm, Cm, D = (t.requires_grad_() for t in inputs(L=9, seed=10))
    y, _ = ops.selective_scan_chunked(x, dt, A, Bm, Cm, D, chunk_size=4)
    with pytest.raises(RuntimeError, match="first order.*fixed_paths"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    with fixed_paths():
        y, _ = ops.selective_scan_chunked(x, dt, A, Bm, Cm, D, chunk_size=4)
    (gx,) = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
    (gA,) = torch.autograd.grad(gx.square().sum(), A)
    y, _ = ops.selective_scan_recurrent(x, dt, A, Bm, Cm, D)
    (gx,) = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
    torch.testing.assert_close(gA, torch.autograd.grad(gx.square().sum(), A)[0])


def test_the_returned_state_can_be_updated_in_place():
    tensors = [t.requires_grad_() for t in inputs(L=9, seed=11)]
    y, h = ops.selective_scan_chunked(*tensors, chunk_size=4)
    h.mul_(2)
    (y.sum() + h.sum()).backward()
    assert all(t.grad is not None for t in tensors)
