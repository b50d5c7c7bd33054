"""Member-folded kernels (recallkit.ops.member_fold): under vmap over packed members, one call on the
folded batch gives each member the outputs and gradients of its own call, with the kernel's value-
dependent paths."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from recallkit.ops.member_fold import folds_members
from recallkit.ops.numerics import fixed_paths, paths_fixed
from tests.kernel_checks import graph_names

K, B, H, T, D = 3, 2, 2, 11, 4


def _inputs(kernel: str, seed: int) -> dict[str, torch.Tensor | tuple]:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = randn(B, H, T, D), randn(B, H, T, D), randn(B, H, T, D)
    decay = -F.softplus(randn(B, H, T, D))  # log-decays <= 0
    if kernel == "gla_scalar":
        return dict(q=q, k=k, v=v, g=decay[..., 0], state=randn(B, H, D, D))
    if kernel == "gla_vector":
        return dict(q=q, k=k, v=v, g=decay, state=randn(B, H, D, D))
    if kernel == "gsa":
        return dict(q=q, k=k, v=v, g=decay, state=(randn(B, H, D, D), randn(B, H, D, D)))
    if kernel == "kda":
        return dict(q=q, k=F.normalize(k, dim=-1), v=v, beta=torch.sigmoid(randn(B, H, T)), g=decay)
    alpha = -F.normalize(randn(B, H, T, D), dim=-1)  # RWKV-7: alpha = -kappa, beta = kappa * a
    return dict(q=q, k=k, v=v, alpha=alpha, beta=-alpha * torch.sigmoid(randn(B, H, T, D)), g=decay)


KERNELS = {
    "gla_scalar": ops.gated_linear_attention_chunked,
    "gla_vector": ops.gated_linear_attention_chunked,
    "gsa": ops.gsa_chunked,
    "kda": ops.kda_chunked,
    "rwkv7": ops.rwkv7_chunked,
}


def _flat(outputs) -> list[torch.Tensor]:
    """y and the state's tensors, in order."""
    return [t for o in outputs for t in (o if isinstance(o, tuple) else (o,))]


def _loss(outputs) -> torch.Tensor:
    return sum((t.sin() * (i + 1)).sum() for i, t in enumerate(_flat(outputs)))


def _leaves(tree) -> list[torch.Tensor]:
    return [t for v in tree.values() for t in (v if isinstance(v, tuple) else (v,))]


@pytest.mark.parametrize("shared", [(), ("v",)])
@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_members_get_their_own_outputs_and_gradients(kernel, shared):
    """K members under vmap (packing's ``fixed_paths(first_order=True)``): each member's outputs and
    gradients equal its own call outside packing (the kernel's GEMM path, chunk 4 over T=11: a
    padded last chunk), and an input shared by the members (no member axis) gets the sum."""
    run = KERNELS[kernel]
    members = [_inputs(kernel, seed) for seed in range(K)]

    def stack(values):
        return tuple(map(stack, zip(*values))) if isinstance(values[0], tuple) else torch.stack(values)

    packed = {n: members[0][n] if n in shared else stack([m[n] for m in members]) for n in members[0]}
    for t in _leaves(packed):
        t.requires_grad_()
    batched = [n for n in packed if n not in shared]

    def one(*values):
        given = dict(zip(batched, values), **{n: packed[n] for n in shared})
        return run(*(given[n] for n in packed if n != "state"), state=given.get("state"), chunk_size=4)

    with fixed_paths(first_order=True):
        outputs = torch.func.vmap(one)(*(packed[n] for n in batched))
    assert all("_FoldedBackward" in graph_names(t) for t in _flat(outputs))  # one call, folded
    _loss(outputs).backward()
    expected, alone_outputs = {n: [] for n in packed}, []
    for member in members:
        alone = {n: (packed[n] if n in shared else v) for n, v in member.items()}
        alone = {n: tuple(t.detach().clone().requires_grad_() for t in v) if isinstance(v, tuple)
                 else v.detach().clone().requires_grad_() for n, v in alone.items()}
        state = alone.get("state")
        out = run(*(alone[n] for n in alone if n != "state"), state=state, chunk_size=4)
        _loss(out).backward()
        for n, v in alone.items():
            expected[n].append(tuple(t.grad for t in v) if isinstance(v, tuple) else v.grad)
        alone_outputs.append(_flat(out))
    for got, want in zip(_flat(outputs), zip(*alone_outputs)):
        torch.testing.assert_close(got, torch.stack(want), atol=1e-10, rtol=1e-10)
    for n, value in packed.items():
        parts = value if isinstance(value, tuple) else (value,)
        for i, part in enumerate(parts):
            want = [w[i] if isinstance(w, tuple) else w for w in expected[n]]
            want = sum(want) if n in shared else torch.stack(want)
            torch.testing.assert_close(part.grad, want, atol=1e-10, rtol=1e-10, msg=n)


def test_the_folded_call_runs_outside_fixed_paths_on_the_folded_batch():
    """Inside the fold the kernel may read values (fixed paths are off) and sees K * B sequences."""
    seen = []

    @folds_members
    def kernel(x: torch.Tensor, *, scale: float) -> torch.Tensor:
        seen.append((paths_fixed(), x.shape[0], float(x.detach().abs().max())))  # a value read
        return x * scale

    x = torch.randn(K, B, 5, requires_grad=True)
    with fixed_paths(first_order=True):
        y = torch.func.vmap(lambda x_: kernel(x_, scale=3.0))(x)
    y.sum().backward()
    assert seen == [(False, K * B, float(x.detach().abs().max()))]
    torch.testing.assert_close(x.grad, torch.full_like(x, 3.0))
    with fixed_paths(), pytest.raises(RuntimeError):  # without first_order: vmap cannot read a value
        torch.func.vmap(lambda x_: kernel(x_, scale=3.0))(x)


def test_inputs_that_are_not_batch_first_are_refused():
    @folds_members
    def kernel(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * w

    with fixed_paths(first_order=True), pytest.raises(ValueError, match="batch-first"):
        torch.func.vmap(kernel)(torch.randn(K, B, 5), torch.randn(K, 7, 5))


def test_an_argument_it_cannot_fold_is_refused_not_passed_through():
    """A state object it does not know (a dataclass of tensors, say) would keep the folded batch."""
    @folds_members
    def kernel(x: torch.Tensor, *, state: object) -> torch.Tensor:
        return x

    with fixed_paths(first_order=True), pytest.raises(TypeError, match="tensors and plain options"):
        torch.func.vmap(lambda x: kernel(x, state=object()))(torch.randn(K, B, 5))


def test_the_kernels_graph_lives_as_long_as_the_packed_graph():
    """Its tensors are released with the outer graph's saved tensors (not held by the autograd node
    after backward: a packed trainer keeps last step's graph while it builds the next), and kept by
    ``retain_graph=True`` for a second backward."""
    x = torch.randn(K, B, 2, T, D, dtype=torch.float64, requires_grad=True)
    decay = -F.softplus(torch.randn(K, B, 2, T, D, dtype=torch.float64))

    def loss():
        with fixed_paths(first_order=True):
            y, _ = torch.func.vmap(lambda a, g: ops.gated_linear_attention_chunked(a, a, a, g, chunk_size=4))(
                x, decay)
        return y.square().sum()

    first = loss()
    first.backward(retain_graph=True)
    once = x.grad.clone()
    first.backward()
    torch.testing.assert_close(x.grad, 2 * once)
    second = loss()
    node = second.grad_fn
    while "_FoldedBackward" not in node.name():  # y.square().sum(): each node has one input here
        node = next(n for n, _ in node.next_functions if n is not None)
    second.backward()
    with pytest.raises(RuntimeError, match="freed"):
        node.saved_tensors  # noqa: B018 (reading it is the check)
