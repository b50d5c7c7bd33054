"""Accuracy on labelled positions: per-sequence mean (Zoology's metric) and token-pooled, per slice."""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.model import LanguageModel
from recallkit.tasks.base import IGNORE_INDEX, Batch


def _accuracies(correct: Tensor, scored: Tensor) -> dict[str, float]:
    """correct, scored: (N, T) bool. Sequences without a scored position are left out."""
    per_sequence_total = scored.sum(1)
    has_labels = per_sequence_total > 0
    per_sequence = (correct & scored).sum(1)[has_labels] / per_sequence_total[has_labels]
    return {
        "accuracy": per_sequence.float().mean().item() if has_labels.any() else float("nan"),
        "token_accuracy": ((correct & scored).sum() / scored.sum().clamp(min=1)).item(),
        "num_examples": int(has_labels.sum()),
    }


@torch.no_grad()
def predict(model: LanguageModel, batch: Batch, batch_size: int = 256) -> Tensor:
    """Greedy next-token predictions (N, T) of the parallel form, in minibatches."""
    device = model.embed.weight.device
    predictions = []
    for start in range(0, len(batch), batch_size):
        part = batch[start : start + batch_size].to(device)
        predictions.append(model(part.inputs, part.prefix_len).argmax(-1).cpu())
    return torch.cat(predictions)


def evaluate(model: LanguageModel, batch: Batch, batch_size: int = 256) -> dict:
    """Score ``model`` on ``batch``.

    Returns:
        ``{"accuracy", "token_accuracy", "num_examples", "slices": {name: {value: {...}}}}`` where
        ``accuracy`` is the mean over sequences of the fraction of their labelled positions
        predicted exactly, and ``token_accuracy`` pools all labelled positions.
    """
    was_training = model.training
    model.eval()
    predictions = predict(model, batch, batch_size)
    model.train(was_training)
    scored = batch.labels != IGNORE_INDEX
    correct = predictions == batch.labels
    metrics: dict = _accuracies(correct, scored)
    metrics["slices"] = {
        name: {
            str(int(value)): _accuracies(correct[values == value], scored[values == value])
            for value in torch.unique(values)
        }
        for name, values in batch.slices.items()
    }
    return metrics
