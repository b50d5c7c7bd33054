"""`recallkit bench --quick`: the smoke run of the benchmarks (numbers are not asserted, shapes are)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import recallkit as rk
from recallkit.bench import kernel_cases
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
