"""Kernels of packed members run as one call on a batch of all the members' sequences.

Packed training (:mod:`recallkit.packing`) runs K models under ``torch.func.vmap`` over a member
axis. vmap cannot branch on a tensor's values, so inside ``ops.numerics.fixed_paths()`` the
vector-gate kernels give up the GEMM form that their decays select and take the exact masked
sub-chunk form: 1.5-5x slower for a whole KDA, RWKV-7 or GSA training step (measured on CPU,
d=64 and 128). But a kernel's inputs and states are batch-first, (B, H, T, D) and (B, ...), and
its sequences are independent, so K members' calls are one call on the (K B, ...) batch. A kernel
decorated with :func:`folds_members` does that under ``fixed_paths(first_order=True)``: the vmap
rule of :class:`_Folded` folds the member axis into the batch and runs the kernel outside vmap,
where it picks its paths as in an unpacked run, records its own autograd graph and answers backward
from it. (Kernels with an input that is not batch-first, a parameter such as Mamba's A or a conv
filter, write their own vmap rule instead.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from recallkit.ops.numerics import first_order_only, free_paths


def folds_members(kernel: Callable) -> Callable:
    """``kernel`` (batch-first tensor arguments; keyword options that are not tensors, ``state``
    may be a tensor, a tuple of tensors or None; it returns a tensor or a (nested) tuple of them),
    run through :class:`_Folded` under ``fixed_paths(first_order=True)``, else as it is."""

    @functools.wraps(kernel)
    def run(*args: Any, **kwargs: Any) -> Any:
        if not first_order_only():
            return kernel(*args, **kwargs)
        tensors, rebuild_inputs = _flatten((args, kwargs))
        call = _Call(kernel, rebuild_inputs, torch.is_grad_enabled())
        outputs = _Folded.apply(call, *tensors)
        return call.rebuild_outputs(list(outputs))

    return run


class _Call:
    """One folded call: the kernel, how to rebuild its arguments and outputs from flat tensor lists,
    and, between forward and setup_context, the graph the forward recorded."""

    def __init__(self, kernel: Callable, rebuild_inputs: Callable, grad: bool) -> None:
        self.kernel, self.rebuild_inputs, self.grad = kernel, rebuild_inputs, grad
        self.rebuild_outputs: Callable = lambda flat: flat
        self.graph: tuple[list, list] | None = None


class _Folded(torch.autograd.Function):
    @staticmethod
    def forward(call: _Call, *tensors: Tensor | None) -> tuple[Tensor, ...]:
        with torch.enable_grad() if call.grad else torch.no_grad(), free_paths():
            leaves = [t if t is None or not t.is_floating_point() else t.detach().requires_grad_(call.grad)
                      for t in tensors]
            args, kwargs = call.rebuild_inputs(leaves)
            outputs, call.rebuild_outputs = _flatten(call.kernel(*args, **kwargs))
        call.graph = leaves, outputs
        return tuple(o.detach() for o in outputs)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        call = inputs[0]
        leaves, outputs = call.graph
        call.graph = None
        ctx.num_leaves = len(leaves)  # saved, not attributes: released with the outer graph's saved tensors
        ctx.save_for_backward(*leaves, *outputs)

    @staticmethod
    def vmap(info, in_dims: tuple, call: _Call, *tensors: Tensor | None):
        """(K, B, ...) -> (K B, ...) for every tensor (one without a member axis is shared by the
        members: expanded), one call, and the outputs back to (K, B, ...)."""
        K = info.batch_size
        members = [None if t is None else t.expand(K, *t.shape) if dim is None else t.movedim(dim, 0)
                   for t, dim in zip(tensors, in_dims[1:])]
        batches = {t.shape[1] for t in members if t is not None}
        if len(batches) != 1:
            raise ValueError(f"{call.kernel.__name__}: a member-folded kernel takes batch-first tensors of "
                             f"one batch size; got batch sizes {sorted(batches)}")
        (batch,) = batches
        folded = [None if t is None else t.flatten(0, 1) for t in members]
        outputs = _Folded.apply(call, *folded)
        return tuple(o.unflatten(0, (K, batch)) for o in outputs), (0,) * len(outputs)

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():  # create_graph: the recorded graph would give first derivatives only
            raise RuntimeError("a member-folded kernel's backward is first order (packed training)")
        saved = ctx.saved_tensors
        leaves, outputs = saved[:ctx.num_leaves], saved[ctx.num_leaves:]
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
        wanted = [i for i, leaf in enumerate(leaves)
                  if leaf is not None and leaf.requires_grad and ctx.needs_input_grad[1 + i]]
        found = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted],
                                    [g for _, g in pairs], allow_unused=True,
                                    retain_graph=True) if pairs and wanted else ()
        result: list[Tensor | None] = [None] * len(leaves)
        for i, grad in zip(wanted, found):
            result[i] = grad
        return None, *result


def _flatten(tree: Any) -> tuple[list, Callable[[list], Any]]:
    """The tensors (and Nones standing for tensors) of nested tuples, lists and dicts, in order, and a
    function that builds the same structure from such a list."""
    if tree is None or isinstance(tree, Tensor):
        return [tree], lambda flat: flat[0]
    if isinstance(tree, (tuple, list, dict)):
        items = list(tree.values()) if isinstance(tree, dict) else list(tree)
        parts = [_flatten(item) for item in items]
        sizes = [len(flat) for flat, _ in parts]

        def rebuild(flat: list) -> Any:
            built, start = [], 0
            for (_, rebuild_item), size in zip(parts, sizes):
                built.append(rebuild_item(flat[start:start + size]))
                start += size
            if isinstance(tree, dict):
                return dict(zip(tree.keys(), built))
            return type(tree)(*built) if hasattr(tree, "_fields") else type(tree)(built)

        return [t for flat, _ in parts for t in flat], rebuild
    if not isinstance(tree, (bool, int, float, str, torch.dtype)):
        raise TypeError(f"a member-folded kernel takes tensors and plain options, not {type(tree).__name__}")
    return [], lambda flat: tree  # a constant option (a chunk size, a flag)
