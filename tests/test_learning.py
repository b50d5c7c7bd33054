"""Learning tests (slow): measured accuracy after a bounded number of steps."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from sweeps.quickstart import LEARNING_TRAIN, mqar_run

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_solves_mqar(seed):
    """2-layer attention, d=64: >= 0.99 on MQAR (V=256, T=64, 8 pairs) within the step budget."""
    config = mqar_run({"name": "attention"}, d_model=64, seq_len=64, num_kv_pairs=8,
                      train={**LEARNING_TRAIN, "seed": seed})
    result = rk.train(config)
    print(f"attention seed={seed}: acc={result.metrics['accuracy']:.3f} after {result.metrics['steps']} steps "
          f"({result.wall_time:.0f} s)")
    assert result.status == "done"
    assert result.metrics["accuracy"] >= 0.99


def test_linear_attention_on_the_same_budget_is_recorded_and_below_attention():
    """The record: Taylor linear attention, d=64, same budget. Its fixed state holds less than the pairs."""
    config = mqar_run({"name": "linear_attention", "feature_map": "taylor"}, d_model=64, seq_len=64,
                      num_kv_pairs=8, train=LEARNING_TRAIN)
    result = rk.train(config)
    print(f"linear_attention(taylor): acc={result.metrics['accuracy']:.3f} after {result.metrics['steps']} "
          f"steps ({result.wall_time:.0f} s), state={result.state_size}")
    assert result.status == "done"
    assert 0.0 < result.metrics["accuracy"] < 0.99
