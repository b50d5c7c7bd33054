"""recallkit's kernels against the pure-PyTorch kernels a CPU user of transformers would otherwise run.

One peer today: Qwen3-Next's ``torch_chunk_gated_delta_rule`` (transformers' fallback when
flash-linear-attention is absent) against :func:`recallkit.ops.delta_rule_chunked` on the same
inputs, each in its own layout ((B, T, H, D) there, (B, H, T, D) here; the peer scales queries by
Dk^-1/2 itself, so recallkit gets them pre-scaled). The decays are drawn as Qwen3-Next's layer draws
them at initialisation, g = -A softplus(a + dt_bias) with A ~ U(1, 16) and dt ~ logU(1e-3, 0.1), so
a chunk's cumulative decay underflows float32 as in a real model. Each row has both times and both
float32 errors, max |y - y_ref| against the float64 token loop (the spec).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM = 8, 64


def _qwen3_next_inputs(batch: int, length: int) -> dict[str, torch.Tensor]:
    """q, k (L2-normalised), v, beta, g in the peer's layout (B, T, H, ...)."""
    gen = torch.Generator().manual_seed(0)
    shape = (batch, length, HEADS)
    q, v = (torch.randn(*shape, HEAD_DIM, generator=gen) for _ in range(2))
    k = F.normalize(torch.randn(*shape, HEAD_DIM, generator=gen), dim=-1)
    A = torch.empty(HEADS).uniform_(1, 16, generator=gen)
    dt = torch.exp(torch.empty(HEADS).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # softplus(dt_bias) = dt
    g = -A * F.softplus(torch.randn(*shape, generator=gen) + dt_bias)
    return dict(q=q, k=k, v=v, beta=torch.rand(*shape, generator=gen), g=g)


def bench_peers(shapes: list[tuple[int, int]], repeats: int, timeit: Callable[..., float],
                progress: Callable[[str], None]) -> list[dict]:
    """Per (batch, length): the gated delta rule against Qwen3-Next's; [] without transformers."""
    try:
        from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule
    except ImportError:
        return []
    from recallkit.ops import delta_rule_chunked, delta_rule_recurrent

    rows = []
    for batch, length in shapes:
        progress(f"peer gated delta rule B={batch} N={length}")
        x = _qwen3_next_inputs(batch, length)
        heads_second = {name: t.transpose(1, 2).contiguous() for name, t in x.items()}
        heads_second["q"] = heads_second["q"] * HEAD_DIM**-0.5
        ours_args = [heads_second[name] for name in ("q", "k", "v", "beta", "g")]
        with torch.no_grad():
            reference = delta_rule_recurrent(*(t.double() for t in ours_args))[0]
            ours = delta_rule_chunked(*ours_args)[0]
            peer = torch_chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])[0].transpose(1, 2)
            seconds = timeit(lambda: delta_rule_chunked(*ours_args), repeats)
            peer_seconds = timeit(lambda: torch_chunk_gated_delta_rule(
                x["q"], x["k"], x["v"], x["g"], x["beta"], output_final_state=True), repeats)
        rows.append(dict(kernel="delta_rule_gated", peer="qwen3_next torch_chunk_gated_delta_rule",
                         batch=batch, N=length, ms=seconds * 1e3, peer_ms=peer_seconds * 1e3,
                         speedup_vs_peer=peer_seconds / seconds,
                         max_error=(ours.double() - reference).abs().max().item(),
                         peer_max_error=(peer.double() - reference).abs().max().item()))
    return rows
