"""Performance benchmarks (not tests): one run on the current machine, ratios from that run.

Four measurements, all on the default device in float32:

1. the matmul peak, the best GFLOP/s of an (n, n) @ (n, n) product;
2. kernel prefill time at sequence lengths N (batch 1, 8 heads, head dim 64; Taylor features from
   16 dims), as a speed-up over torch SDPA causal attention at the same N and as achieved GFLOP/s
   and % of the matmul peak (FLOPs counted from each chunked algorithm's GEMMs; the gated kernels
   count their ungated GEMMs, so their % of peak is a lower bound; the selective scan and the FFT
   long conv are elementwise/FFT work and report time only), and, for the kernels with a token loop,
   as a speed-up over that loop on the same inputs;
3. per registered mixer (d_model 128, default config): chunked prefill vs its token loop, and the
   training step of a 2-layer model: tokens/s, MFU (its matmul FLOPs per second, counted by torch's
   FLOP counter over forward and backward, as % of the matmul peak), and the same for 4 such models
   trained as one packed model (``recallkit.packing``) with the packed step's speed-up over 4 steps;
4. with transformers installed, kernels against its pure-PyTorch peers (``recallkit.bench_peers``):
   time and float32 error of each at batch {1, 8} x N {512, 2k, 8k}.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recallkit.bench_peers import bench_peers
from recallkit.errors import RecallkitError, first_line

HEADS, HEAD_DIM, TAYLOR_DIM, CHUNK = 8, 64, 16, 64
DELTA_CHUNK = 32  # the delta-rule kernels' and RWKV-7's default chunk (64 is slower at every benched shape)
LOOP_MAX_N = 4096  # longest N at which the kernels' token loops are timed too
PEER_SHAPES = [(batch, n) for n in (512, 2048, 8192) for batch in (1, 8)]  # (batch, N) against peers
PEER_SHAPES_QUICK = [(1, 64), (2, 128)]


def _timeit(fn: Callable[[], object], repeats: int, min_time: float = 0.0) -> float:
    """Median seconds of ``fn`` after one warm-up call (more repeats until ``min_time`` is spent)."""
    fn()
    times: list[float] = []
    while len(times) < repeats or sum(times) < min_time:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if len(times) >= 50:
            break
    return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best measured float32 GFLOP/s of an (n, n) @ (n, n) matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = min(_timeit(lambda: a @ b, 1) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


@dataclass
class KernelCase:
    """One kernel at one length: how to build its inputs, run it, and its FLOP count."""

    name: str
    run: Callable[..., Callable[[], object]]  # N (, form) -> a zero-argument call that runs the kernel
    flops: Callable[[int], float] | None  # N -> floating-point operations of that call
    loop: bool = False  # run(N, form="recurrent") is the same work through the token loop


def _form(name: str, form: str, chunk: int = CHUNK) -> Callable[..., object]:
    """``recallkit.ops.<name>_<form>``: the chunked form (at the bench's chunk size) or the token loop."""
    import recallkit.ops as ops

    kernel = getattr(ops, f"{name}_{form}")
    return functools.partial(kernel, chunk_size=chunk) if form == "chunked" else kernel


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) / math.sqrt(shape[-1])


def _sdpa(N: int):
    q, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _forgetting(N: int, form: str = "chunked"):
    kernel = _form("forgetting_attention", form)
    q, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    log_f = F.logsigmoid(torch.randn(1, HEADS, N) + 4)  # FoX's log forget gates, f ~ 0.98
    return lambda: kernel(q, k, v, log_f)


def _linear_attention(feature: str, chunk: int = CHUNK):
    from recallkit.ops import linear_attention_chunked
    from recallkit.ops.feature_maps import FEATURE_MAPS

    def make(N: int):
        dim = TAYLOR_DIM if feature == "taylor" else HEAD_DIM
        q, k = (FEATURE_MAPS[feature](_randn(1, HEADS, N, dim)) for _ in range(2))
        v = _randn(1, HEADS, N, HEAD_DIM)
        return lambda: linear_attention_chunked(q, k, v, normalize=feature != "identity", chunk_size=chunk)
    return make


def _linear_flops(features: int, values: int, chunk: int = CHUNK):
    """Chunked linear attention per token and head: intra-chunk (C, C) scores and their product
    with V (2C(F + Dv)), the inter-chunk read Q S and write K^T V (4 F Dv)."""
    def flops(N: int) -> float:
        return HEADS * N * (2 * chunk * (features + values) + 4 * features * values)
    return flops


def _gated(vector: bool):
    def make(N: int, form: str = "chunked"):
        kernel = _form("gated_linear_attention", form)
        q, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
        gate_shape = (1, HEADS, N, HEAD_DIM) if vector else (1, HEADS, N)
        g = -F.softplus(torch.randn(gate_shape)) / 16  # log-decays <= 0
        return lambda: kernel(q, k, v, g)
    return make


def _gsa(N: int, form: str = "chunked"):
    kernel = _form("gsa", form)
    q, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    g = -F.softplus(torch.randn(1, HEADS, N, HEAD_DIM)) / 8  # log forget gates of m = HEAD_DIM slots
    return lambda: kernel(q, k, v, g)


def _rwkv6(N: int, form: str = "chunked"):
    kernel = _form("rwkv6", form)
    r, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    g = -torch.exp(torch.randn(1, HEADS, N, HEAD_DIM) - 4)  # Finch's log-decays -exp(d_t)
    u = torch.randn(HEADS, HEAD_DIM) / math.sqrt(HEAD_DIM)
    return lambda: kernel(r, k, v, g, u)


def _delta_rule(N: int, form: str = "chunked"):
    kernel = _form("delta_rule", form, DELTA_CHUNK)
    q, v = _randn(1, HEADS, N, HEAD_DIM), _randn(1, HEADS, N, HEAD_DIM)
    k = F.normalize(torch.randn(1, HEADS, N, HEAD_DIM), dim=-1)
    beta, g = torch.rand(1, HEADS, N), -F.softplus(torch.randn(1, HEADS, N)) / 16
    return lambda: kernel(q, k, v, beta, g)


def _delta_flops(N: int) -> float:
    """Per chunk of C tokens and head (Dk = Dv = d): K K^T and Q K^T (4 C^2 d), the UT transform
    applied once, to beta (V - K_w S) (2 C^2 d), scores times U' (2 C^2 d), and W S, Q S and K^T U'
    (6 C d^2); the triangular solve is not counted. KDA's vector-gated scores cost more than K K^T,
    so its % of peak from this count is a lower bound."""
    d, C = HEAD_DIM, DELTA_CHUNK
    return HEADS * (N / C) * (8 * C * C * d + 6 * C * d * d)


def _delta_product(N: int, form: str = "chunked"):
    kernel = _form("delta_product", form, DELTA_CHUNK)
    n = 2  # n_h, the default of the mixer (and of fla)
    q, v = _randn(1, HEADS, N, HEAD_DIM), _randn(1, HEADS, N, n, HEAD_DIM)
    k = F.normalize(torch.randn(1, HEADS, N, n, HEAD_DIM), dim=-1)
    beta, g = torch.rand(1, HEADS, N, n), -F.softplus(torch.randn(1, HEADS, N)) / 16
    return lambda: kernel(q, k, v, beta, g)


def _kda(N: int, form: str = "chunked"):
    kernel = _form("kda", form, DELTA_CHUNK)
    q, v = _randn(1, HEADS, N, HEAD_DIM), _randn(1, HEADS, N, HEAD_DIM)
    k = F.normalize(torch.randn(1, HEADS, N, HEAD_DIM), dim=-1)
    beta, g = torch.rand(1, HEADS, N), -F.softplus(torch.randn(1, HEADS, N, HEAD_DIM)) / 16
    return lambda: kernel(q, k, v, beta, g)


def _log_linear(N: int, form: str = "chunked"):
    kernel = _form("log_linear", form)
    q, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    g = -F.softplus(torch.randn(1, HEADS, N)) / 16  # Mamba-2's scalar log-decays <= 0
    lam = F.softplus(torch.randn(1, HEADS, N, max(N - 1, 0).bit_length() + 1))  # one weight per level
    return lambda: kernel(q, k, v, g, lam)


def _log_linear_flops(N: int) -> float:
    """Per head, the useful work: per token the intra-chunk scores and their product with V
    (2C(Dk + Dv)) and the write K^T V (2 Dk Dv); per token of the chunk starting at s, the reads Q S_j
    of the Fenwick states that partition [0, s), one per set bit of s (2 Dk Dv each: at s = 0 none,
    never more than log2(N / C)). The kernel reads and writes every level densely (zeros where a level
    is empty), several times this count in all; that extra work is counted as lost, not as throughput."""
    reads = sum(min(CHUNK, N - start) * start.bit_count() for start in range(0, N, CHUNK))
    return HEADS * (N * 2 * CHUNK * 2 * HEAD_DIM + 2 * HEAD_DIM * HEAD_DIM * (reads + N))


def _rwkv7(N: int, form: str = "chunked"):
    kernel = _form("rwkv7", form, DELTA_CHUNK)
    r, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    kappa = F.normalize(torch.randn(1, HEADS, N, HEAD_DIM), dim=-1)  # RWKV-7's removal key
    a = torch.rand(1, HEADS, N, HEAD_DIM)  # in-context learning rates
    g = -math.exp(-0.5) * torch.sigmoid(torch.randn(1, HEADS, N, HEAD_DIM) - 4)  # log w_t
    return lambda: kernel(r, k, v, -a * kappa, kappa, g)


def _dplr_flops(N: int) -> float:
    """Per chunk of C tokens and head (Dk = Dv = d): four decayed score matrices (8 C^2 d), G V, the
    UT transform applied to B_e and G V, and the reads P_a U, P_k V (10 C^2 d), and W S, Q S, A_d^T U
    and K_d^T V (8 C d^2)."""
    d, C = HEAD_DIM, DELTA_CHUNK
    return HEADS * (N / C) * (18 * C * C * d + 8 * C * d * d)


def _mamba3(N: int, form: str = "chunked"):
    kernel = _form("mamba3", form)
    q, k, v = (_randn(1, HEADS, N, HEAD_DIM) for _ in range(3))
    dt = F.softplus(torch.randn(1, HEADS, N) - 4)  # Mamba's step sizes, ~0.02
    g, lam = -dt * F.softplus(torch.randn(1, HEADS, N)), torch.rand(1, HEADS, N)  # dt * A_t <= 0
    return lambda: kernel(q, k, v, g, dt, lam)


def _selective_scan(N: int, form: str = "chunked"):
    kernel = _form("selective_scan", form)
    channels, states = HEADS * HEAD_DIM, 16  # Mamba's d_inner and d_state
    x = torch.randn(1, N, channels)
    dt = F.softplus(torch.randn(1, N, channels) - 4)
    A = -torch.rand(channels, states) - 0.5
    B, C = torch.randn(1, N, states), torch.randn(1, N, states)
    return lambda: kernel(x, dt, A, B, C)


def _longhorn(N: int, form: str = "chunked"):
    kernel = _form("longhorn", form)
    channels, states = HEADS * HEAD_DIM, 16  # the selective scan's d_inner and d_state
    x, beta = torch.randn(1, N, channels), torch.rand(1, N, channels)
    k, q = torch.randn(1, N, states) / math.sqrt(states), torch.randn(1, N, states)
    return lambda: kernel(x, beta, k, q)


def _fft_conv(N: int):
    from recallkit.ops import fft_causal_conv

    channels = HEADS * HEAD_DIM
    x, h = torch.randn(1, channels, N), torch.randn(channels, N) / N
    return lambda: fft_causal_conv(x, h)


def kernel_cases() -> list[KernelCase]:
    """The benchmarked kernels; SDPA is the reference every speed-up is relative to."""
    taylor_features = 1 + TAYLOR_DIM + TAYLOR_DIM**2
    return [
        KernelCase("sdpa_causal", _sdpa, lambda N: 2 * HEADS * N * N * HEAD_DIM),
        # SDPA per chunk of C queries over every key up to its end (the bias masks the rest): 2N(N + C)d
        KernelCase("forgetting_attention", _forgetting, lambda N: 2 * HEADS * N * (N + CHUNK) * HEAD_DIM,
                   loop=True),
        KernelCase("linear_attention", _linear_attention("identity"), _linear_flops(HEAD_DIM, HEAD_DIM)),
        KernelCase("linear_attention_c128", _linear_attention("identity", 128),
                   _linear_flops(HEAD_DIM, HEAD_DIM, 128)),
        KernelCase("linear_attention_taylor16", _linear_attention("taylor"),
                   _linear_flops(taylor_features, HEAD_DIM + 1)),
        KernelCase("gated_la_scalar", _gated(vector=False), _linear_flops(HEAD_DIM, HEAD_DIM), loop=True),
        KernelCase("gated_la_vector", _gated(vector=True), _linear_flops(HEAD_DIM, HEAD_DIM), loop=True),
        # two chunked linear attentions' GEMMs: slot scores (m = d outputs), then the read of d values
        KernelCase("gsa", _gsa, lambda N: 2 * _linear_flops(HEAD_DIM, HEAD_DIM)(N), loop=True),
        # the vector-gate chunked linear attention's GEMMs; the bonus and the shift are elementwise
        KernelCase("rwkv6", _rwkv6, _linear_flops(HEAD_DIM, HEAD_DIM), loop=True),
        KernelCase("delta_rule_gated", _delta_rule, _delta_flops, loop=True),
        # the gated delta rule's GEMMs over the 2N interleaved micro-steps of n_h = 2
        KernelCase("delta_product_2", _delta_product, lambda N: _delta_flops(2 * N), loop=True),
        KernelCase("kda", _kda, _delta_flops, loop=True),  # the gated delta rule's GEMMs, per-channel decays
        KernelCase("log_linear", _log_linear, _log_linear_flops, loop=True),  # Fenwick levels, scalar gate
        KernelCase("rwkv7", _rwkv7, _dplr_flops, loop=True),  # the diagonal-plus-rank-1 (DPLR) delta rule
        # the scalar-gate chunked linear attention's GEMMs; the trapezoid's key weights are elementwise
        KernelCase("mamba3", _mamba3, _linear_flops(HEAD_DIM, HEAD_DIM), loop=True),
        KernelCase("selective_scan", _selective_scan, None, loop=True),  # elementwise: no GEMM FLOPs to count
        KernelCase("longhorn", _longhorn, None, loop=True),  # the selective scan's elementwise two-level scan
        KernelCase("fft_long_conv", _fft_conv, None),
    ]


def bench_kernels(lengths: list[int], peak: float, repeats: int,
                  progress: Callable[[str], None]) -> list[dict]:
    """Time every kernel at every length; speed-up vs SDPA at the same length and, for kernels with a
    token loop, vs that loop on the same inputs (up to N = LOOP_MAX_N: the loop's time is linear in N)."""
    rows, sdpa_time = [], {}
    for case in kernel_cases():
        for N in lengths:
            progress(f"kernel {case.name} N={N}")
            with torch.no_grad():
                seconds = _timeit(case.run(N), repeats)
                looped = _timeit(case.run(N, form="recurrent"), 1) if case.loop and N <= LOOP_MAX_N else None
            if case.name == "sdpa_causal":
                sdpa_time[N] = seconds
            gflops = case.flops(N) / seconds / 1e9 if case.flops else None
            rows.append(dict(kernel=case.name, N=N, ms=seconds * 1e3,
                             speedup_vs_sdpa=sdpa_time[N] / seconds,
                             speedup_vs_loop=None if looped is None else looped / seconds,
                             gflops=gflops, pct_peak=None if gflops is None else 100 * gflops / peak))
    return rows


def _mixer(key: str, d_model: int):
    from recallkit.mixers import MIXERS, build_mixer

    torch.manual_seed(0)
    return build_mixer(d_model, MIXERS[key].Config(name=key)).eval()


def bench_mixers(lengths: list[int], d_model: int, repeats: int,
                 progress: Callable[[str], None]) -> list[dict]:
    """Per registered mixer and length: chunked prefill vs the token loop of ``step`` (batch 1)."""
    from recallkit.mixers import MIXERS

    rows = []
    for key in MIXERS:
        mixer = _mixer(key, d_model)
        for N in lengths:
            progress(f"mixer {key} N={N}")
            x = torch.randn(1, N, d_model)

            def loop():
                state = mixer.init_state(1, x.device, x.dtype)
                for t in range(N):
                    _, state = mixer.step(x[:, t], state)

            try:
                with torch.no_grad():
                    prefill = _timeit(lambda: mixer.prefill(x), repeats)
                    stepping = _timeit(loop, 1)
            except (ValueError, RecallkitError) as error:  # e.g. a length beyond a filter's max_len
                rows.append(dict(mixer=key, N=N, error=first_line(str(error))))
                continue
            rows.append(dict(mixer=key, N=N, prefill_ms=prefill * 1e3, loop_ms=stepping * 1e3,
                             prefill_speedup=stepping / prefill))
    return rows


PACK = 4  # members of the packed training step


def _step_flops(step: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``step`` counted from its matmuls, convolutions and
    attention products (torch's FLOP counter, forward and backward); elementwise work is not counted.
    Causal attention counts half of its (T, T) products, the work the CPU flash kernel does (it skips
    the masked blocks: 1.35-1.40x faster than non-causal at N = 1-2k) and the kernel table's rule;
    torch's counter counts them in full. In-place batched matmuls (``baddbmm_``, linear attention's
    read of the state), which torch's counter skips, are counted as their out-of-place forms."""
    from torch.utils.flop_counter import FlopCounterMode, bmm_flop, sdpa_backward_flop_count, sdpa_flop_count

    def causal(flops: int, is_causal: bool) -> int:
        return flops // 2 if is_causal else flops

    aten = torch.ops.aten
    uncounted = {  # the CPU flash kernels, which torch's counter does not know, with its SDPA formulas
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, dropout_p=0.0, is_causal=False, *_, **__: causal(
                sdpa_flop_count(q, k, v), is_causal),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad, q, k, v, out, lse, dropout_p=0.0, is_causal=False, *_, **__: causal(
                sdpa_backward_flop_count(grad, q, k, v), is_causal),
        aten.baddbmm_: lambda self, batch1, batch2, *_, **__: bmm_flop(batch1, batch2),
    }
    with FlopCounterMode(display=False, custom_mapping=uncounted) as counter:
        step()
    return counter.get_total_flops()


def bench_training(seq_len: int, batch_size: int, steps: int, d_model: int, peak: float,
                   progress: Callable[[str], None]) -> list[dict]:
    """Per registered mixer, an AdamW training step of a 2-layer model (d_model, no MLP): tokens/s,
    the model FLOP utilisation (matmul FLOPs per second as % of the measured matmul ``peak``), and
    the same for ``PACK`` models of that shape trained as one packed model (recallkit.packing),
    with ``packed_speedup``: the time of ``PACK`` unpacked steps over one packed step."""
    from recallkit.config import ModelConfig
    from recallkit.mixers import MIXERS
    from recallkit.model import build_model
    from recallkit.packing import PackedModels

    rows = []
    for key in MIXERS:
        progress(f"train {key}")
        config = ModelConfig(vocab_size=256, d_model=d_model, num_layers=2, mixer={"name": key}, mlp="none")
        models = []
        for seed in range(PACK):
            torch.manual_seed(seed)
            models.append(build_model(config))
        model, packed = models[0], PackedModels(models)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        packed_optimizer = torch.optim.AdamW(packed.parameters(), lr=1e-3)  # the cost of K member AdamWs
        tokens = torch.randint(0, 256, (PACK, batch_size, seq_len + 1))
        no_prefix = torch.zeros(PACK, batch_size, dtype=torch.long)

        def train_step():
            logits = model(tokens[0, :, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[0, :, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def packed_step():
            losses = packed.losses(tokens[..., :-1], tokens[..., 1:], no_prefix)
            packed_optimizer.zero_grad()
            losses.sum().backward()
            packed_optimizer.step()

        flops = _step_flops(train_step)
        seconds, packed_seconds = _timeit(train_step, steps), _timeit(packed_step, steps)
        rows.append(dict(mixer=key, seq_len=seq_len, batch_size=batch_size,
                         tokens_per_s=batch_size * seq_len / seconds, ms_per_step=seconds * 1e3,
                         mfu=100 * flops / seconds / 1e9 / peak,
                         packed_mfu=100 * PACK * flops / packed_seconds / 1e9 / peak,
                         packed_speedup=PACK * seconds / packed_seconds))
    return rows


def run_bench(quick: bool = False, progress: Callable[[str], None] = lambda _: None) -> dict:
    """All benchmarks. ``quick``: tiny sizes for a CI smoke run (seconds, not minutes).

    Returns:
        dict with ``machine``, ``matmul_peak_gflops`` and the rows of ``kernels``, ``mixers``,
        ``training`` and ``peers``.
    """
    torch.manual_seed(0)
    progress("matmul peak")
    peak = matmul_peak(256 if quick else 2048)
    kernel_lengths = [256, 512] if quick else [1024, 2048, 4096, 8192, 16384, 32768]
    return dict(
        machine=dict(threads=torch.get_num_threads(), torch=torch.__version__, quick=quick),
        matmul_peak_gflops=peak,
        kernels=bench_kernels(kernel_lengths, peak, 1 if quick else 3, progress),
        mixers=bench_mixers([256] if quick else [256, 1024], 32 if quick else 128, 1 if quick else 3,
                            progress),
        training=bench_training(32 if quick else 256, 2 if quick else 8, 1 if quick else 3,
                                32 if quick else 128, peak, progress),
        peers=bench_peers(PEER_SHAPES_QUICK if quick else PEER_SHAPES, 1 if quick else 3, _timeit, progress),
    )
