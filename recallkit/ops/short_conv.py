"""Short causal depthwise convolution: y_t = b + sum_{i<K} w_i * x_{t-K+1+i} per channel.

Its recurrent state is the tail of the last K - 1 inputs, (B, D, K - 1): zeros before the first
token. Inputs are (B, T, D), the model layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.ops.numerics import adjoints_allowed, paths_fixed


def short_conv(x: Tensor, weight: Tensor, bias: Tensor | None, *, state: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Parallel form.

    Args:
        x: (B, T, D) inputs.
        weight: (D, K) filter per channel; bias: (D,) or None.
        state: the tail (B, D, K - 1) of previous inputs, or None for zeros.
    Returns:
        y (B, T, D) and the new tail (B, D, K - 1).
    """
    B, T, D = x.shape
    K = weight.shape[1]
    tail = x.new_zeros(B, D, K - 1) if state is None else state
    padded = torch.cat([tail.transpose(1, 2), x], dim=1)  # (B, K - 1 + T, D)
    # under vmap no tensor reports requires_grad, so inside fixed_paths grad mode alone decides
    needs_grad = paths_fixed() or any(t is not None and t.requires_grad for t in (padded, weight, bias))
    if torch.is_grad_enabled() and needs_grad and adjoints_allowed():
        y = _ShortConv.apply(padded, weight, bias)
    else:  # no gradients, or fixed_paths (compile), where autograd records the shifts
        y = _shifted_sum(padded, weight, T)
        y = y if bias is None else y + bias
    return y, padded[:, T:].transpose(1, 2)


def _shifted_sum(padded: Tensor, weight: Tensor, T: int) -> Tensor:
    """sum_i w_i x_{t-K+1+i} as K shifted multiply-adds, (B, T, D): faster on CPU than a grouped
    conv1d for the short kernels used here. ``weight`` (D, K), or (B, 1, D, K): one per sequence."""
    K = weight.shape[-1]
    y = padded[:, K - 1 :] * weight[..., K - 1]
    for i in range(K - 1):
        y = torch.addcmul(y, padded[:, i : i + T], weight[..., i])
    return y


class _ShortConv(torch.autograd.Function):
    """The parallel form with its backward written out: autograd through the K shifted slices built
    a zero (B, K - 1 + T, D) gradient per slice; here

        d padded_s = sum_i w_i dy_{s-i},  dw_i = sum_{b,t} dy_t ⊙ padded_{t+i},  dbias = sum_{b,t} dy_t,

    K multiply-adds into one buffer (measured at B=8, T=256, D=256, K=4: 6 -> 4 ms forward +
    backward). The backward is itself differentiable (its ops are recorded under create_graph);
    torch.func transforms run the conv inside ``ops.numerics.fixed_paths()``, as every kernel, and
    vmap (packed members) keeps this backward there by its vmap rule under ``first_order``."""

    @staticmethod
    def forward(padded: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        y = _shifted_sum(padded, weight, padded.shape[1] - weight.shape[-1] + 1)
        return y if bias is None else y + bias  # out of place: the dtype promotes as in the other path

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        padded, weight, _ = inputs
        wants_padded, wants_weight, wants_bias = ctx.needs_input_grad
        ctx.save_for_backward(padded if wants_weight else None, weight if wants_padded else None)
        ctx.wants = (wants_padded, wants_weight, wants_bias)
        ctx.weight_shape = weight.shape
        ctx.bias_shape = None if inputs[2] is None else inputs[2].shape

    @staticmethod
    def vmap(info, in_dims: tuple, padded: Tensor, weight: Tensor, bias: Tensor | None):
        """Packed members: the member axis joins the batch, (K, B, ...) -> (K B, ...), with one
        filter (1, D, K) and bias (1, D) per sequence; sequences are independent, so this is K convs."""
        K = info.batch_size

        def front(t: Tensor, dim: int | None) -> Tensor:  # the member axis first: (K, ...)
            return t.expand(K, *t.shape) if dim is None else t.movedim(dim, 0)

        padded = front(padded, in_dims[0])
        Bsz = padded.shape[1]

        def per_sequence(t: Tensor, dim: int | None) -> Tensor:  # (K, ...) -> (K B, 1, ...)
            t = front(t, dim)
            return t.unsqueeze(1).expand(K, Bsz, *t.shape[1:]).reshape(K * Bsz, 1, *t.shape[1:])

        y = _ShortConv.apply(padded.flatten(0, 1), per_sequence(weight, in_dims[1]),
                             None if bias is None else per_sequence(bias, in_dims[2]))
        return y.unflatten(0, (K, Bsz)), 0

    @staticmethod
    def backward(ctx, dy: Tensor):
        padded, weight = ctx.saved_tensors
        wants_padded, wants_weight, wants_bias = ctx.wants
        d_padded = d_weight = None
        T = dy.shape[1]
        if wants_padded:
            K = weight.shape[-1]
            d_padded = torch.cat([dy * weight[..., 0], dy.new_zeros(dy.shape[0], K - 1, dy.shape[2])], dim=1)
            for i in range(1, K):
                d_padded[:, i:i + T].addcmul_(dy, weight[..., i])
        if wants_weight:
            tap = ctx.weight_shape[:-1]  # (D,), or (B, 1, D) per sequence
            d_weight = torch.stack([(dy * padded[:, i:i + T]).sum_to_size(tap)
                                    for i in range(ctx.weight_shape[-1])], dim=-1)
        return d_padded, d_weight, dy.sum_to_size(ctx.bias_shape) if wants_bias else None


def short_conv_recurrent(x: Tensor, weight: Tensor, bias: Tensor | None, *, state: Tensor | None = None
                         ) -> tuple[Tensor, Tensor]:
    """Token loop (the reference): same arguments and returns as :func:`short_conv`."""
    B, T, D = x.shape
    K = weight.shape[1]
    tail = x.new_zeros(B, D, K - 1) if state is None else state
    outputs = []
    for t in range(T):
        window = torch.cat([tail, x[:, t, :, None]], dim=2)  # (B, D, K)
        y = (window * weight).sum(-1)
        outputs.append(y if bias is None else y + bias)
        tail = window[:, :, 1:]
    return torch.stack(outputs, dim=1) if outputs else x, tail
