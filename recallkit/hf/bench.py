"""``recallkit bench --pretrained SOURCE``: a pretrained model's prefill and decode speed on this machine.

Prefill: tokens/s and achieved GFLOP/s as % of the measured matmul peak, through the adapter (the
model's own cache), beside a plain transformers forward without a cache on the same batch. FLOPs per
sequence: 2 N T for the weights (N parameters but an untied input embedding, a lookup; the tied head
counted once as it is used once per token) plus the causal attention 2 L_a T^2 H d_h over the L_a
attention layers (scores and values, half of the T x T square); recurrent and conv layers' own
elementwise work is not counted. Decode: tokens/s of the step loop through the cache (one token per
step, never a re-prefill), plain and, for a model with attention layers, with every attention
layer's cache compressed by an eviction policy at a budget.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from recallkit.bench import matmul_peak
from recallkit.errors import RecallkitError, first_line, is_out_of_memory
from recallkit.hf.adapter import HFModel
from recallkit.hf.evicting import attention_layers
from recallkit.inference.decode import evicting_state
from recallkit.kv import make_policy, resolve_budget


def _best(run: Callable[[], Any], repeats: int) -> float:
    """Best wall time (s) of ``repeats`` calls after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def prefill_flops(model: HFModel, batch: int, length: int) -> float:
    config = model.hf_config
    attention = 0
    if layers := len(attention_layers(model.model)):
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        attention = 2 * layers * length * length * heads * head_dim
    weights = model.num_params()
    output = model.model.get_output_embeddings()
    if output is None or output.weight is not model.embed.weight:  # untied: the input side is a lookup
        weights -= model.embed.weight.numel()
    return batch * (2 * weights * length + attention)


@torch.no_grad()
def bench_pretrained(model: HFModel, *, batch: int = 8, length: int | None = None, decode_tokens: int = 32,
                     policy: str = "h2o", budget: float = 0.25, repeats: int = 3, quick: bool = False,
                     progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Prefill and decode measurements of ``model`` (float, eval mode) on random tokens; ``quick``: one
    repeat and a small matmul for the peak (a smoke run). ``length``: prefill tokens per sequence,
    by default 512, or fewer where the model's context must also hold the ``decode_tokens``."""
    if length is None:
        room = None if model.max_context is None else model.max_context - decode_tokens
        length = 512 if room is None else max(1, min(512, room))
    if batch < 1 or length < 1 or decode_tokens < 1:
        raise RecallkitError(f"bench needs a batch, length and decode_tokens of at least 1; got {batch}, "
                             f"{length}, {decode_tokens}")
    if model.max_context is not None and length + decode_tokens > model.max_context:  # past its positions
        raise RecallkitError(f"bench reads {length} + {decode_tokens} decoded tokens, over "
                             f"{model.config.source}'s context of {model.max_context}; use a length <= "
                             f"{model.max_context - decode_tokens}")
    if batch * (length + decode_tokens) > MAX_TOKENS:
        raise RecallkitError(f"bench of {batch} x {length + decode_tokens:,} tokens: more than "
                             f"{MAX_TOKENS:,} tokens is beyond any machine's memory here; use a shorter "
                             "length or a smaller batch")
    with _in_memory(batch, length):
        return _measure(model, batch, length, decode_tokens, policy, budget, 1 if quick else repeats, quick,
                        progress)


MAX_TOKENS = 2**32
"""Most tokens a benchmark batch may hold (their int64 ids alone would be 32 GiB)."""


@contextlib.contextmanager
def _in_memory(batch: int, length: int) -> Iterator[None]:
    """Name the batch when the benchmark runs out of memory (torch's error gives a byte count)."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise RecallkitError(f"a benchmark of {batch} x {length:,} tokens needs more memory than this "
                             f"machine has ({first_line(str(error), 'none left')}); use a shorter length "
                             "or a smaller batch") from error


def _measure(model: HFModel, batch: int, length: int, decode_tokens: int, policy: str, budget: float,
             repeats: int, quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    """The measurements of :func:`bench_pretrained`, its arguments checked."""
    progress("matmul peak")
    peak = matmul_peak(256 if quick else 2048)
    tokens = torch.randint(0, model.vocab_size, (batch, length + decode_tokens),
                           generator=torch.Generator().manual_seed(0)).to(model.embed.weight.device)
    context, continuation = tokens[:, :length], tokens[:, length:]
    progress("prefill")
    adapter_s = _best(lambda: model.prefill(context), repeats)
    plain_s = _best(lambda: model.model(input_ids=context, use_cache=False), repeats)
    flops = prefill_flops(model, batch, length)

    def decode(evicting: bool) -> float:
        if evicting:
            state, caches = evicting_state(model, batch, make_policy(policy), resolve_budget(budget, length),
                                           "prefill")
            _, state = model.prefill(context, state=state)
            for cache in caches:
                cache.compress()
        else:
            _, state = model.prefill(context)
        start = time.perf_counter()
        for t in range(decode_tokens):
            _, state = model.step(continuation[:, t], state)
        return time.perf_counter() - start

    progress("decode")
    plain_decode = min(decode(False) for _ in range(repeats))
    evicting_decode = None  # a model without attention layers has no KV cache to evict
    if model.has_attention:
        progress(f"decode under {policy}")
        evicting_decode = min(decode(True) for _ in range(repeats))
    return {
        "model": model.config.source, "batch": batch, "length": length, "threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak,
        "prefill_tokens_per_s": batch * length / adapter_s,
        "prefill_gflops": flops / adapter_s / 1e9, "prefill_pct_peak": 100 * flops / adapter_s / 1e9 / peak,
        "plain_forward_gflops": flops / plain_s / 1e9, "prefill_vs_plain_forward": plain_s / adapter_s,
        "decode_tokens_per_s": batch * decode_tokens / plain_decode,
        "evicting_decode_tokens_per_s": (None if evicting_decode is None
                                         else batch * decode_tokens / evicting_decode),
        "evicting_decode_cost": None if evicting_decode is None else evicting_decode / plain_decode,
        "policy": policy, "budget": budget,
    }
