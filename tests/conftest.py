"""Shared fixtures: tiny run configs and sweep files written into tmp_path."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest
import torch

import recallkit as rk

TINY_SWEEP = """
import recallkit as rk

configs = [
    rk.RunConfig(
        model=dict(vocab_size=32, d_model=d, num_layers=1, mixer=dict(name=mixer), max_position=16),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
        train=dict(lr=lr, max_steps={steps}, eval_every=10, batch_size=16, num_train_examples=256,
                   num_test_examples=32, warmup_steps=2, device="cpu"),
    )
    for mixer in ("attention", "linear_attention")
    for d in (8, 16)
    for lr in (1e-3, 3e-3)
]
"""


def tiny_run(**train) -> rk.RunConfig:
    """A run that trains in well under a second."""
    return rk.RunConfig(
        model=dict(vocab_size=32, d_model=16, num_layers=1, mixer=dict(name="attention"), max_position=16),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
        train={"max_steps": 20, "eval_every": 10, "batch_size": 16, "num_train_examples": 128,
               "num_test_examples": 32, "warmup_steps": 2, "device": "cpu", **train},
    )


@pytest.fixture(autouse=True)
def _sigint_restored():
    """A CLI command interrupted in-process (CliRunner) ignores SIGINT on its way out, as the real
    process does; restore the handler, or every later subprocess would inherit the ignore and shrug
    off Ctrl-C."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture
def sweep_file(tmp_path: Path):
    """Write the tiny 8-run sweep with ``steps`` training steps per run; returns its path."""
    def write(steps: int = 20) -> Path:
        path = tmp_path / "tiny_sweep.py"
        path.write_text(textwrap.dedent(TINY_SWEEP.format(steps=steps)))
        return path
    return write


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a loaded 2-core machine their spinning
    multiplies the CPU time (8x measured): a module that asks for this runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# What a plain `make test` skips for lack of an optional tool (CI sets RECALLKIT_REQUIRE_BROWSER / _RAY /
# _MODEL = 1 and fails instead): named at the end of the run, so that a green run says what it did not test.
OPTIONAL_TOOLS = [
    ("Chromium", ("chromium",), "RECALLKIT_REQUIRE_BROWSER", "apt-get install chromium"),
    ("Ray", ("'ray'", "recallkit[ray]"), "RECALLKIT_REQUIRE_RAY", "pip install 'recallkit[ray]'"),
    ("SmolLM2-135M", ("smollm2",), "RECALLKIT_REQUIRE_MODEL", "make install"),
]


def skip_reason(report) -> str:
    """The reason a skipped test report gives ('' when there is none)."""
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A visible notice naming the tests skipped because Chromium, Ray or the real model is missing."""
    skipped = terminalreporter.stats.get("skipped", [])
    lines = []
    for tool, markers, variable, install in OPTIONAL_TOOLS:
        names = sorted({report.nodeid for report in skipped
                        if any(marker in skip_reason(report).lower() for marker in markers)})
        if names:
            lines.append(f"{len(names)} test(s) NOT RUN: {tool} is not installed ({install}; "
                         f"{variable}=1 makes this a failure, as in CI):")
            lines.extend(f"    {name}" for name in names)
    if lines:
        terminalreporter.write_sep("=", "skipped for missing optional tools", yellow=True, bold=True)
        for line in lines:
            terminalreporter.write_line(line, yellow=True)


@pytest.fixture(params=["whole_chunk", "sub_chunks"])
def vector_gate_path(request, monkeypatch):
    """Both ways of scoring a per-channel gate: one GEMM per chunk (the default while every chunk's
    decays stay within 40 nats) and the sub-chunk factorisation that stronger decays need."""
    import recallkit.ops.gated_linear_attention as gla

    monkeypatch.setattr(gla, "_WHOLE_CHUNK_GEMM", request.param == "whole_chunk")
    return request.param
