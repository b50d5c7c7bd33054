"""Chunked linear attention == token recurrence == quadratic form, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch

from recallkit import ops
from recallkit.ops.feature_maps import FEATURE_MAPS, feature_dim
from tests.kernel_checks import graph_names


def qkv(B=2, H=2, T=23, F=5, Dv=3, positive=True, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, F, generator=g, dtype=dtype) for _ in range(2))
    if positive:
        q, k = q.exp() * 0.5, k.exp() * 0.5
    v = torch.randn(B, H, T, Dv, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("grad_mode", [True, False])  # the chunk states: fresh sums, or in place
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 64])
def test_chunked_equals_recurrent_and_quadratic(normalize, chunk_size, grad_mode):
    q, k, v = qkv(positive=normalize)
    y_rec, s_rec = ops.linear_attention_recurrent(q, k, v, normalize=normalize)
    with torch.set_grad_enabled(grad_mode):
        y_chunk, s_chunk = ops.linear_attention_chunked(q, k, v, normalize=normalize, chunk_size=chunk_size)
    y_quad = ops.linear_attention_quadratic(q, k, v, normalize=normalize)
    torch.testing.assert_close(y_chunk, y_rec)
    torch.testing.assert_close(y_quad, y_rec)
    torch.testing.assert_close(s_chunk, s_rec)
    assert s_rec.shape == (2, 2, 5, 3 + int(normalize))


@pytest.mark.parametrize("grad_mode", [True, False])
@pytest.mark.parametrize("normalize", [False, True])
def test_chunked_resumes_from_a_state(normalize, grad_mode):
    q, k, v = qkv(positive=normalize)
    y_full, s_full = ops.linear_attention_recurrent(q, k, v, normalize=normalize)
    with torch.set_grad_enabled(grad_mode):
        _, s_head = ops.linear_attention_chunked(q[:, :, :9], k[:, :, :9], v[:, :, :9], normalize=normalize,
                                                 chunk_size=4)
        y_tail, s_tail = ops.linear_attention_chunked(
            q[:, :, 9:], k[:, :, 9:], v[:, :, 9:], state=s_head, normalize=normalize, chunk_size=4
        )
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    torch.testing.assert_close(s_tail, s_full)


@pytest.mark.parametrize("normalize", [False, True])
def test_gradients_agree(normalize):
    """Chunked vs token loop, backward: gradients of q, k, v and of the starting state (PLA starts
    its causal part from one), through both the output and the final state."""
    grads = []
    for form in (ops.linear_attention_recurrent, ops.linear_attention_chunked):
        q, k, v = (t.requires_grad_() for t in qkv(T=13, positive=normalize, seed=3))
        g = torch.Generator().manual_seed(4)
        state = torch.rand(2, 2, 5, 3 + int(normalize), generator=g, dtype=q.dtype, requires_grad=True)
        kwargs = {"chunk_size": 4} if form is ops.linear_attention_chunked else {}
        y, s = form(q, k, v, state=state, normalize=normalize, **kwargs)
        weights = torch.linspace(-1, 1, y.numel() + s.numel(), dtype=y.dtype)
        (torch.cat([y.flatten(), s.flatten()]) * weights).sum().backward()
        grads.append([q.grad, k.grad, v.grad, state.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("normalize", [False, True])
def test_quadratic_gradients_agree_with_the_recurrence(normalize):
    grads = []
    for form in ("recurrent", "quadratic"):
        q, k, v = (t.requires_grad_() for t in qkv(T=13, positive=normalize, seed=3))
        if form == "recurrent":
            y, _ = ops.linear_attention_recurrent(q, k, v, normalize=normalize)
        else:
            y = ops.linear_attention_quadratic(q, k, v, normalize=normalize)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append([q.grad, k.grad, v.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("normalize", [False, True])
def test_gradcheck_chunked(normalize):
    q, k, v = (t.requires_grad_() for t in qkv(B=1, H=1, T=6, F=3, Dv=2, positive=normalize, seed=5))
    torch.autograd.gradcheck(
        lambda q, k, v: ops.linear_attention_chunked(q, k, v, normalize=normalize, chunk_size=4)[0], (q, k, v)
    )


def test_taylor_feature_map_approximates_exp():
    g = torch.Generator().manual_seed(0)
    d = 16
    q, k = torch.randn(2, d, generator=g, dtype=torch.float64) * 0.5
    dot = (q * k).sum()
    phi = FEATURE_MAPS["taylor"]
    assert phi(q).shape[-1] == feature_dim("taylor", d) == 273
    expected = 1 + dot / math.sqrt(d) + dot**2 / (2 * d)
    torch.testing.assert_close((phi(q) * phi(k)).sum(), expected)


@pytest.mark.parametrize("name", ["elu", "relu", "taylor"])
def test_positive_feature_maps_give_non_negative_scores(name):
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1)) * 3
    scores = FEATURE_MAPS[name](x) @ FEATURE_MAPS[name](x).T
    assert (scores >= 0).all()


@pytest.mark.parametrize("kernel_size", [2, 4])
def test_short_conv_parallel_equals_token_loop_forward_and_backward(kernel_size):
    from recallkit.ops.short_conv import short_conv, short_conv_recurrent

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, kernel_size, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(2, 5, kernel_size - 1, generator=g, dtype=torch.float64)
    y, t = short_conv(x, w, b, state=tail)
    y_ref, t_ref = short_conv_recurrent(x, w, b, state=tail)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(t, t_ref)
    torch.testing.assert_close(t, x[:, -(kernel_size - 1):].transpose(1, 2))
    grads = torch.autograd.grad(y.sum(), (x, w, b))
    grads_ref = torch.autograd.grad(y_ref.sum(), (x, w, b))
    for a, r in zip(grads, grads_ref):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fixed", [False, True])
def test_short_conv_written_backward_equals_the_token_loop_and_passes_gradgradcheck(bias, fixed):
    """The parallel form's written backward (and, under fixed_paths, autograd through its shifts):
    gradients of x, the filter, the bias and the incoming tail equal the token loop's; first and
    second derivatives pass gradcheck in float64."""
    from recallkit.ops.numerics import fixed_paths
    from recallkit.ops.short_conv import short_conv, short_conv_recurrent

    g = torch.Generator().manual_seed(3)
    x, w, b, tail = (torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
                     for shape in ((2, 7, 3), (3, 4), (3,), (2, 3, 3)))
    b = b if bias else None
    leaves = [t for t in (x, w, b, tail) if t is not None]
    dy = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    with fixed_paths() if fixed else torch.enable_grad():
        y = short_conv(x, w, b, state=tail)[0]
        assert ("ShortConv" in y.grad_fn.name()) != fixed
        grads = torch.autograd.grad(y, leaves, dy)
        grads_ref = torch.autograd.grad(short_conv_recurrent(x, w, b, state=tail)[0], leaves, dy)
        for a, r in zip(grads, grads_ref):
            torch.testing.assert_close(a, r)

        def form(*tensors):
            x_, w_, *rest = tensors
            return short_conv(x_, w_, rest[0] if bias else None, state=rest[-1])[0]

        torch.autograd.gradcheck(form, leaves)
        torch.autograd.gradgradcheck(form, leaves)


@pytest.mark.parametrize("shared", [(), ("w",), ("x", "tail")])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_short_convs_keep_the_written_backward_and_their_own_gradients(shared, bias):
    """Under vmap over members (packing: fixed_paths(first_order=True)) the conv keeps its written
    backward (its vmap rule: members folded into the batch, a filter per sequence), and each member's
    gradients equal the token loop's on that member alone; an input without a member axis gets the
    sum of the members' gradients."""
    from recallkit.ops.numerics import fixed_paths
    from recallkit.ops.short_conv import short_conv, short_conv_recurrent

    g = torch.Generator().manual_seed(5)
    names = ("x", "w", "b", "tail") if bias else ("x", "w", "tail")
    shapes = {"x": (2, 7, 3), "w": (3, 4), "b": (3,), "tail": (2, 3, 3)}
    members = [{n: torch.randn(*shapes[n], generator=g, dtype=torch.float64) for n in names}
               for _ in range(3)]
    packed = {n: (members[0][n] if n in shared else torch.stack([m[n] for m in members])).requires_grad_()
              for n in names}
    batched = [n for n in names if n not in shared]

    def loss(*args):
        t = dict(zip(batched, args), **{n: packed[n] for n in shared})
        y, new_tail = short_conv(t["x"], t["w"], t.get("b"), state=t["tail"])
        return y.sin().sum() + new_tail.square().sum(), y

    with fixed_paths(first_order=True):
        losses, y = torch.func.vmap(loss)(*(packed[n] for n in batched))
    assert "_ShortConvBackward" in graph_names(y)
    losses.sum().backward()
    for n in names:
        alone = []
        for m in members:
            leaves = {k: (packed[k] if k in shared else v).detach().clone().requires_grad_()
                      for k, v in m.items()}
            y, new_tail = short_conv_recurrent(leaves["x"], leaves["w"], leaves.get("b"),
                                               state=leaves["tail"])
            (y.sin().sum() + new_tail.square().sum()).backward()
            alone.append(leaves[n].grad)
        expected = sum(alone) if n in shared else torch.stack(alone)
        torch.testing.assert_close(packed[n].grad, expected, atol=1e-10, rtol=1e-10, msg=n)


def test_short_conv_paths_agree_on_dtype_and_save_only_what_their_gradients_need():
    """The written backward's path promotes like the others (bf16 inputs, float32 bias), and with a
    frozen filter it keeps no inputs: the returned tail may be edited before backward."""
    from recallkit.ops.short_conv import short_conv

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 3, generator=g).to(torch.bfloat16).requires_grad_()
    w, b = torch.randn(3, 4, generator=g).to(torch.bfloat16), torch.randn(3, generator=g)
    y = short_conv(x, w, b)[0]
    with torch.no_grad():
        y_no_grad = short_conv(x, w, b)[0]
    assert y.dtype == y_no_grad.dtype == torch.float32
    torch.testing.assert_close(y.detach(), y_no_grad)
    x = torch.randn(2, 6, 3, generator=g, requires_grad=True)
    y, tail = short_conv(x, torch.randn(3, 4, generator=g), None)
    tail.zero_()
    (x_grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(x_grad).all()
