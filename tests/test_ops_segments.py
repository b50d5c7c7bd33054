"""Cache blocking: chunked kernels run in segments equal their token recurrences, forward and backward."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from recallkit.ops import segments

B, H, T, D = 2, 2, 23, 4


def _inputs(kind: str, seed: int = 0) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=torch.float64) for _ in range(3))
    if kind == "linear":
        return dict(q=F.elu(q) + 1, k=F.elu(k) + 1, v=v)
    if kind in ("scalar", "vector"):
        shape = (B, H, T) if kind == "scalar" else (B, H, T, D)
        return dict(q=q, k=k, v=v, g=-F.softplus(torch.randn(shape, generator=g, dtype=torch.float64)))
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    decay = (-F.softplus(torch.randn(B, H, T, generator=g, dtype=torch.float64))
             if kind == "gated_delta" else None)
    return dict(q=q, k=F.normalize(k, dim=-1), v=v, beta=beta, g=decay)


KERNELS = {
    "linear": (ops.linear_attention_chunked, ops.linear_attention_recurrent),
    "scalar": (ops.gated_linear_attention_chunked, ops.gated_linear_attention_recurrent),
    "vector": (ops.gated_linear_attention_chunked, ops.gated_linear_attention_recurrent),
    "delta": (ops.delta_rule_chunked, ops.delta_rule_recurrent),
    "gated_delta": (ops.delta_rule_chunked, ops.delta_rule_recurrent),
}


@pytest.mark.parametrize("kind", list(KERNELS))
def test_segmented_chunked_kernel_equals_the_recurrence(kind, monkeypatch):
    monkeypatch.setattr(segments, "SEGMENT_TOKENS", 8)  # 23 tokens -> segments of 8, 8, 7
    assert segments.segment_length(4) == 8 and segments.segment_length(16) == 16
    chunked, recurrent = KERNELS[kind]
    module, calls = sys.modules[chunked.__module__], []

    def counting(*args, **kwargs):
        calls.append(args[0])
        return segments.in_segments(*args, **kwargs)

    monkeypatch.setattr(module, "in_segments", counting)
    inputs = {name: None if x is None else x.requires_grad_() for name, x in _inputs(kind).items()}
    state = torch.randn(B, H, D, D + (kind == "linear"), dtype=torch.float64)
    y_fast, s_fast = chunked(**inputs, state=state, chunk_size=4)
    y_ref, s_ref = recurrent(**inputs, state=state)
    torch.testing.assert_close(y_fast, y_ref)
    torch.testing.assert_close(s_fast, s_ref)
    assert calls == [chunked]  # the long input really ran in segments
    tensors = [x for x in inputs.values() if x is not None]
    weights = torch.randn_like(y_ref)
    grads_fast = torch.autograd.grad((y_fast * weights).sum() + s_fast.sum(), tensors)
    grads_ref = torch.autograd.grad((y_ref * weights).sum() + s_ref.sum(), tensors)
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref)
