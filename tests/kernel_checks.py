"""Checks shared by the kernel tests (``tests/test_ops_*.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def _leaves(state: Tensor | tuple | None) -> list[Tensor]:
    """A state as a flat list of its tensors (a tensor, a tuple of them, or None)."""
    if state is None:
        return []
    return [state] if isinstance(state, Tensor) else [t for part in state for t in _leaves(part)]


def assert_chunked_gradients_match_loop(
    recurrent: Callable, chunked: Callable, inputs: Callable[[], Iterable[Tensor]],
    start_state: Callable[[], Tensor | tuple], chunk_sizes: Iterable[int], *, atol: float = 1e-11,
    rtol: float = 1e-10,
) -> None:
    """The gradients of every input and of the starting state through ``chunked(*inputs, state=,
    chunk_size=)`` at each chunk size equal those through ``recurrent(*inputs, state=)`` (float64).

    The loss weighs y by a ramp and adds the squares of the final state's tensors, each with its own
    factor, so every output element and every state tensor carries a distinct gradient.

    Args:
        inputs, start_state: fresh float64 tensors (or a tuple of them for the state) on each call.
    """
    grads = []
    for chunk_size in (None, *chunk_sizes):
        args = [t.detach().clone().requires_grad_() for t in inputs()]
        state = start_state()
        state = (state.detach().clone().requires_grad_() if isinstance(state, Tensor)
                 else tuple(s.detach().clone().requires_grad_() for s in state))
        if chunk_size is None:
            y, final = recurrent(*args, state=state)
        else:
            y, final = chunked(*args, state=state, chunk_size=chunk_size)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        loss = (y * weights).sum() + sum((i + 1) * s.square().sum() for i, s in enumerate(_leaves(final)))
        loss.backward()
        grads.append([t.grad for t in (*args, *_leaves(state))])
    for chunk_size, other in zip(chunk_sizes, grads[1:]):
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(b, a, atol=atol, rtol=rtol,
                                       msg=lambda m, c=chunk_size: f"chunk_size {c}: {m}")


def graph_names(tensor: Tensor) -> set[str]:
    """The names of every autograd node that ``tensor``'s gradient would pass through."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    return {node.name() for node in seen}
