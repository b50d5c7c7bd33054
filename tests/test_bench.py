"""`recallkit bench --quick`: the smoke run of the benchmarks (numbers are not asserted, shapes are)."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import recallkit as rk
from recallkit.bench import PEER_SHAPES_QUICK, _step_flops, kernel_cases
from recallkit.cli import app


def test_bench_quick_covers_every_kernel_and_mixer(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "x SDPA" in result.output and "tokens/s" in result.output
    report = json.loads(out.read_text())
    assert report["matmul_peak_gflops"] > 0
    assert {row["kernel"] for row in report["kernels"]} == {case.name for case in kernel_cases()}
    for row in report["kernels"]:
        assert row["ms"] > 0 and row["speedup_vs_sdpa"] > 0
        assert row["pct_peak"] is None or row["pct_peak"] > 0
    looped = {row["kernel"] for row in report["kernels"] if row["speedup_vs_loop"] is not None}
    assert looped == {case.name for case in kernel_cases() if case.loop}
    assert {"kda", "rwkv7", "gsa", "log_linear", "mamba3", "longhorn"} <= looped  # every 2025-2026 kernel
    assert "x loop" in result.output
    assert [row["kernel"] for row in report["kernels"] if row["speedup_vs_sdpa"] == 1.0][0] == "sdpa_causal"
    assert {row["mixer"] for row in report["mixers"]} == set(rk.MIXERS)
    assert all("error" not in row for row in report["mixers"]), report["mixers"]
    assert {row["mixer"] for row in report["training"]} == set(rk.MIXERS)
    assert all(row["tokens_per_s"] > 0 for row in report["training"])
    assert all(row["mfu"] > 0 and row["packed_mfu"] > 0 and row["packed_speedup"] > 0
               for row in report["training"])
    assert "MFU %" in result.output and "x packed" in result.output
    assert [(row["batch"], row["N"]) for row in report["peers"]] == PEER_SHAPES_QUICK  # with transformers
    for row in report["peers"]:
        assert row["speedup_vs_peer"] > 0  # both compute the gated delta rule of the float64 loop:
        assert 0 <= row["max_error"] < 1e-4 and 0 <= row["peer_max_error"] < 1e-4
    assert "x peer" in result.output


def test_training_flops_are_the_hand_count_of_the_matmuls():
    # one attention layer and the tied head, no MLP: forward GEMMs are 2 m n k each (the fused q, k, v
    # projection, the output projection, Q K^T and P V over all (T, T) pairs, the head); a linear
    # layer's backward is two such GEMMs (input and weight gradients); attention's is five (S = Q K^T
    # recomputed, dP = dO V^T, dV = P^T dO, dQ = dS K, dK = dS^T Q), each over half of the (T, T)
    # pairs: causal attention counts the work the flash kernel does
    B, T, d, V = 2, 16, 32, 64
    torch.manual_seed(0)
    model = rk.build_model(rk.ModelConfig(vocab_size=V, d_model=d, num_layers=1, mlp="none",
                                          mixer={"name": "attention", "num_heads": 2}))
    x = torch.randint(0, V, (B, T))
    linear = 2 * B * T * d * (3 * d + d + V)  # qkv, out, head
    attention = 2 * (2 * B * T * T * d)  # Q K^T and P V, summed over the heads
    flops = _step_flops(lambda: F.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward())
    assert flops == 3 * linear + (2 + 5) / 2 * attention / 2


def test_in_place_batched_matmuls_are_counted():
    a, b, c = torch.randn(3, 4, 5), torch.randn(3, 5, 6), torch.zeros(3, 4, 6)
    in_place = _step_flops(lambda: c.baddbmm_(a, b))
    assert in_place == _step_flops(lambda: torch.baddbmm(c, a, b)) == 2 * 3 * 4 * 5 * 6
