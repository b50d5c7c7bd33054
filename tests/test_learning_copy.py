"""Learning test (slow): attention learns to copy strings (Repeat After Me, arXiv 2402.01032)."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk

pytestmark = pytest.mark.slow
COPY = dict(name="copy", vocab_size=32, alphabet_size=26)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_attention_copies_length_10_strings():
    """2-layer RoPE attention, d=64, trained on strings of 1..10 characters: copies length-10 strings
    exactly (teacher forced and by greedy generation through the step path) within 600 steps."""
    config = rk.RunConfig(
        model=dict(vocab_size=32, d_model=64, num_layers=2, mixer={"name": "attention", "num_heads": 4,
                                                                      "position": "rope"}),
        task={**COPY, "seq_len": 23, "min_len": 1, "max_len": 10},
        eval_tasks=[{**COPY, "seq_len": 23, "min_len": 10, "max_len": 10}], eval_lengths=[5, 20],
        train=dict(max_steps=600, batch_size=64, lr=3e-3, num_train_examples=20_000, num_test_examples=200,
                   eval_every=50),
    )
    result = rk.train(config)
    m = result.metrics
    by_length = {e["length"]: e["exact_match"] for e in m["evals"] if "length" in e}
    print(f"copy L=10: char acc {m['token_accuracy']:.3f}, string exact {m['exact_match']:.3f}, greedy exact "
          f"{m['greedy_exact_match']:.3f} after {m['steps']} steps ({result.wall_time:.0f} s); "
          "exact match by "
          f"length {by_length}")
    assert result.status == "done"
    assert m["token_accuracy"] >= 0.97
    assert m["exact_match"] >= 0.8 and m["greedy_exact_match"] >= 0.8
    assert by_length[5] >= 0.8  # inside the training range
    assert m["train_length_range"] == [1, 10]
