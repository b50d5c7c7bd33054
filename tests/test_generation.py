"""Greedy generation through the recurrent step path, and exact-match scoring."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.evaluate import evaluate
from recallkit.generation import answer_spans, greedy_predictions
from recallkit.tasks import IGNORE_INDEX, Batch

MIXERS = [
    {"name": "attention", "num_heads": 2, "position": "rope"},
    {"name": "attention", "num_heads": 2, "position": "hard_alibi"},
    {"name": "mamba"},
    {"name": "deltanet"},
    {"name": "h3"},
    {"name": "pla"},  # prefix-aware: the context is read non-causally
]


def model_for(mixer: dict) -> rk.model.LanguageModel:
    torch.manual_seed(0)
    return rk.build_model(rk.ModelConfig(vocab_size=32, d_model=32, num_layers=2, mixer=mixer)).eval()


def copy_batch(n: int = 24) -> Batch:
    return rk.make_task("copy", vocab_size=32, seq_len=23, alphabet_size=8, min_len=2,
                        max_len=10).generate(n, 0)


def self_fed(batch: Batch, generated: torch.Tensor) -> Batch:
    """The batch with each answer replaced by the model's own generation: inputs and labels."""
    inputs, labels = batch.inputs.clone(), batch.labels.clone()
    scored = labels != IGNORE_INDEX
    labels[scored] = generated[scored]
    rows, cols = scored.nonzero().unbind(1)
    inside = cols + 1 < inputs.shape[1]
    inputs[rows[inside], cols[inside] + 1] = generated[rows[inside], cols[inside]]
    return Batch(inputs, labels, batch.prefix_len, batch.slices)


@pytest.mark.parametrize("mixer", MIXERS, ids=lambda m: m["name"] + "-" + m.get("position", ""))
def test_greedy_step_path_equals_teacher_forced_argmax_on_its_own_output(mixer):
    model, batch = model_for(mixer), copy_batch()
    generated = greedy_predictions(model, batch, batch_size=7)
    scored = batch.labels != IGNORE_INDEX
    assert ((generated >= 0) == scored).all()
    fed = self_fed(batch, generated)
    with torch.no_grad():
        parallel = model(fed.inputs, fed.prefix_len).argmax(-1)
    assert torch.equal(parallel[scored], generated[scored])
    metrics = evaluate(model, fed, greedy=True)  # an exact model: both protocols agree, both perfect
    assert metrics["exact_match"] == metrics["greedy_exact_match"] == 1.0
    assert metrics["greedy_token_accuracy"] == metrics["token_accuracy"] == 1.0


def test_greedy_differs_from_teacher_forcing_when_the_model_errs():
    model, batch = model_for(MIXERS[0]), copy_batch(64)
    metrics = evaluate(model, batch, greedy=True)
    assert metrics["exact_match"] < 1 and metrics["greedy_exact_match"] < 1
    assert set(metrics["slices"]["length"]["5"]) >= {"exact_match", "greedy_exact_match", "greedy_accuracy"}


def test_exact_match_counts_whole_answers():
    labels = torch.full((3, 4), IGNORE_INDEX)
    labels[:, 1:3] = 5
    inputs = torch.zeros(3, 4, dtype=torch.long)
    batch = Batch(inputs, labels, torch.zeros(3, dtype=torch.long))

    class Fixed(torch.nn.Module):  # predicts 5 at (0, 1), (0, 2), (1, 1): one whole answer right
        def forward(self, inputs, prefix_len=None):
            logits = torch.zeros(3, 4, 8)
            logits[0, 1:3, 5] = logits[1, 1, 5] = 1
            return logits

    model = Fixed()
    model.embed = torch.nn.Embedding(1, 1)
    metrics = evaluate(model, batch)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == pytest.approx(1.5 / 3)


def test_answers_must_be_one_contiguous_span():
    mqar = rk.make_task("mqar", vocab_size=32, seq_len=24, num_kv_pairs=4).generate(4, seed=0)
    with pytest.raises(ValueError, match="one contiguous answer per sequence"):
        answer_spans(mqar.labels)
    with pytest.raises(ValueError, match="without an eviction policy"):
        evaluate(model_for(MIXERS[0]), copy_batch(4), policy="window", budget=4, greedy=True)
