"""float32 precision of the scalar-decay chunked kernels after one strong decay (a reset) inside a
chunk: every later pair's log-decay c_i - c_j is a difference of two cumulative sums near -reset,
which float32 sums would round to ulp(reset) (3e-5 at 1e3). The spec is the token loop in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops

T, H, D = 64, 2, 16


def _extra(name: str, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """The kernel's arguments after q, k, v and before/after the gate (float64)."""
    rand = lambda *shape: torch.rand(1, H, T, *shape, generator=gen, dtype=torch.float64)  # noqa: E731
    return {"delta_rule": (rand(),), "delta_product": (rand(2),), "log_linear": (rand(8),),
            "mamba3": (rand() + 0.1, rand())}.get(name, ())


def _call(name: str, form: str, q, k, v, g, extra):
    kernel = getattr(ops, f"{name}_{form}")
    if name == "delta_product":  # n_h = 2 keys and values per token: (B, H, T, 2, D)
        k, v = torch.stack([k, k.roll(1, -1)], 3), torch.stack([v, -v], 3)
    if name in ("delta_rule", "delta_product"):
        return kernel(q, k, v, extra[0], g)[0]
    return kernel(q, k, v, g, *extra)[0]


KERNELS = ["gated_linear_attention", "forgetting_attention", "log_linear", "delta_rule", "delta_product",
           "mamba3"]


@pytest.mark.parametrize("reset", [1e3, 1e6])
@pytest.mark.parametrize("name", KERNELS)
def test_a_reset_inside_a_chunk_keeps_float32_precision(name, reset):
    gen = torch.Generator().manual_seed(0)
    q, k = (F.normalize(torch.randn(1, H, T, D, generator=gen, dtype=torch.float64), dim=-1) for _ in "qk")
    v = torch.randn(1, H, T, D, generator=gen, dtype=torch.float64)
    g = torch.full((1, H, T), -0.01, dtype=torch.float64)
    g[..., 2] = -reset
    extra = _extra(name, gen)
    y64 = _call(name, "recurrent", q, k, v, g, extra)
    y32 = _call(name, "chunked", *(t.float() for t in (q, k, v, g)), tuple(t.float() for t in extra))
    assert (y32.double() - y64).abs().max() / y64.abs().max() < 2e-6  # FoX, log-linear, delta: 1e-5 to 3e-2
