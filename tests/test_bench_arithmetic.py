"""``recallkit bench``'s arithmetic: the FLOP counts, speed-ups and MFU, with the timer stubbed (the
smoke test asserts shapes only, so any of these could be off by a factor unnoticed)."""

from __future__ import annotations

import pytest
import torch

import recallkit.mixers
from recallkit import bench
from recallkit.bench import KernelCase, _step_flops, kernel_cases

LOWER_BOUNDS = {"kda", "log_linear"}  # documented: the count is of the ungated / useful GEMMs only


def test_each_kernels_flop_count_is_the_count_of_its_gemms():
    """The table's closed forms against torch's FLOP counter on the kernel itself (causal SDPA at half,
    as ``_step_flops`` counts the flash kernel); KDA and log-linear count less than they run."""
    torch.manual_seed(0)
    N = 128
    for case in kernel_cases():
        if case.flops is None:
            continue
        with torch.no_grad():
            measured = _step_flops(case.run(N))
        if case.name in LOWER_BOUNDS:
            assert 0 < case.flops(N) <= measured, case.name
        else:
            assert case.flops(N) == measured, case.name
    # causal attention, counted by hand: Q K^T and P V, 2 N^2 d each, over half of the pairs
    assert kernel_cases()[0].flops(N) == 2 * (2 * N * N * bench.HEAD_DIM) * bench.HEADS / 2


def test_matmul_peak_counts_two_flops_per_multiply_add(monkeypatch):
    monkeypatch.setattr(bench, "_timeit", lambda fn, repeats, min_time=0.0: 0.25)
    assert bench.matmul_peak(n=8, repeats=1) == pytest.approx(2 * 8**3 / 0.25 / 1e9)


def _timer(seconds: dict[str, float]):
    """A ``_timeit`` that returns the seconds named by the timed function's ``tag``."""
    return lambda fn, repeats, min_time=0.0: seconds[getattr(fn, "tag", getattr(fn, "__name__", ""))]


def _tagged(tag: str):
    def run():
        return None
    run.tag = tag
    return run


def test_kernel_rows_are_ratios_to_sdpa_to_the_loop_and_to_the_peak(monkeypatch):
    cases = [KernelCase("sdpa_causal", lambda N: _tagged("sdpa"), lambda N: 1e9),
             KernelCase("k", lambda N, form="chunked": _tagged(form), lambda N: 2e9, loop=True)]
    monkeypatch.setattr(bench, "kernel_cases", lambda: cases)
    monkeypatch.setattr(bench, "_timeit", _timer({"sdpa": 0.1, "chunked": 0.05, "recurrent": 0.5}))
    sdpa, k = bench.bench_kernels([64], peak=80.0, repeats=1, progress=lambda _: None)
    assert sdpa["speedup_vs_sdpa"] == 1.0 and sdpa["gflops"] == pytest.approx(10.0)
    assert k["speedup_vs_sdpa"] == pytest.approx(2.0)  # twice as fast as SDPA
    assert k["speedup_vs_loop"] == pytest.approx(10.0)
    assert k["gflops"] == pytest.approx(40.0) and k["pct_peak"] == pytest.approx(50.0)


def test_training_mfu_and_the_packed_step_count_every_member(monkeypatch):
    monkeypatch.setattr(recallkit.mixers, "MIXERS", {"attention": recallkit.mixers.MIXERS["attention"]})
    monkeypatch.setattr(bench, "_step_flops", lambda step: 2e9)
    monkeypatch.setattr(bench, "_timeit", _timer({"train_step": 0.5, "packed_step": 1.0}))
    (row,) = bench.bench_training(seq_len=8, batch_size=2, steps=1, d_model=16, peak=10.0,
                                  progress=lambda _: None)
    assert row["tokens_per_s"] == pytest.approx(2 * 8 / 0.5)
    assert row["mfu"] == pytest.approx(100 * 2e9 / 0.5 / 1e9 / 10.0)  # 40 %
    assert row["packed_mfu"] == pytest.approx(100 * bench.PACK * 2e9 / 1.0 / 1e9 / 10.0)  # 80 %
    assert row["packed_speedup"] == pytest.approx(bench.PACK * 0.5 / 1.0)


def test_peer_rows_measure_both_kernels_against_the_float64_loop():
    pytest.importorskip("transformers")
    from transformers.models.qwen3_next.modeling_qwen3_next import torch_chunk_gated_delta_rule

    from recallkit.bench_peers import _qwen3_next_inputs, bench_peers
    from recallkit.ops import delta_rule_recurrent

    times = iter([1.0, 3.0])  # ours, then the peer
    (row,) = bench_peers([(1, 64)], 1, lambda fn, repeats: next(times), lambda _: None)
    assert row["speedup_vs_peer"] == pytest.approx(3.0)  # the peer is 3x slower
    x = _qwen3_next_inputs(1, 64)
    with torch.no_grad():
        peer = torch_chunk_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"])[0]
        ours = [x[n].transpose(1, 2).double() for n in ("q", "k", "v", "beta", "g")]
        ours[0] = ours[0] * x["q"].shape[-1] ** -0.5
        reference = delta_rule_recurrent(*ours)[0].transpose(1, 2)
    assert row["peer_max_error"] == pytest.approx((peer.double() - reference).abs().max().item())


def test_log_linear_counts_the_fenwick_states_a_chunk_reads():
    """The count read bit_length(N) + 1 states per token where a chunk starting at s reads only the
    buckets partitioning [0, s) (log-linear attention's Fenwick tree): about 2 of 11 at N = 1024."""
    N, C, d = 1024, bench.CHUNK, bench.HEAD_DIM

    def buckets(start: int) -> int:  # the power-of-two blocks of [0, start), largest first
        count, covered = 0, 0
        for size in (2**k for k in reversed(range(start.bit_length()))):
            if covered + size <= start:
                covered, count = covered + size, count + 1
        return count

    reads = sum(C * buckets(start) for start in range(0, N, C))
    assert reads == C * 32  # chunks 0..15: 32 set bits
    expected = bench.HEADS * (N * 2 * C * 2 * d + 2 * d * d * (reads + N))
    (case,) = [case for case in kernel_cases() if case.name == "log_linear"]
    assert case.flops(N) == expected
