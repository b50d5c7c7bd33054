"""Accuracy on labelled positions: per-sequence mean (Zoology's metric) and token-pooled, per slice."""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.generation import greedy_predictions
from recallkit.inference.decode import evaluate_with_policy
from recallkit.kv import Budget, Mode, Policy, make_policy
from recallkit.mlm import labels_after_prefix
from recallkit.model import LanguageModel
from recallkit.tasks.base import IGNORE_INDEX, Batch


def _accuracies(correct: Tensor, scored: Tensor) -> dict[str, float]:
    """correct, scored: (N, T) bool. Sequences without a scored position are left out; ``exact_match``
    is the fraction of sequences with every scored position right (string-level accuracy). With no
    scored position at all every score is NaN (not 0: nothing was measured)."""
    per_sequence_total = scored.sum(1)
    has_labels = per_sequence_total > 0
    per_sequence = (correct & scored).sum(1)[has_labels] / per_sequence_total[has_labels]
    return {
        "accuracy": per_sequence.float().mean().item() if has_labels.any() else float("nan"),
        "token_accuracy": ((correct & scored).sum() / scored.sum()).item()
        if has_labels.any() else float("nan"),
        "exact_match": (((correct | ~scored).all(1))[has_labels]).float().mean().item()
        if has_labels.any() else float("nan"),
        "num_examples": int(has_labels.sum()),
    }


# Sequences per minibatch of the parallel form: about this many tokens. At 256 sequences of T = 256 the
# activations (tens of MB each) were fresh memory on every call: 16 sequences evaluated the zoology
# models 2.0-2.7x faster (1 thread; the same predictions).
PARALLEL_TOKENS = 4096


@torch.no_grad()
def predict(model: LanguageModel, batch: Batch, batch_size: int | None = None) -> Tensor:
    """Greedy next-token predictions (N, T) of the parallel form, in minibatches of ``batch_size``
    sequences (None: about ``PARALLEL_TOKENS`` tokens each)."""
    if batch_size is None:
        batch_size = max(1, PARALLEL_TOKENS // max(1, batch.inputs.shape[1]))
    device = model.embed.weight.device
    predictions = []
    for start in range(0, len(batch), batch_size):
        part = batch[start : start + batch_size].to(device)
        predictions.append(model(part.inputs, part.prefix_len).argmax(-1).cpu())
    return torch.cat(predictions)


def evaluate(model: LanguageModel, batch: Batch, batch_size: int | None = None,
             policy: str | dict | Policy | None = None,
             budget: Budget | None = None, mode: Mode = "continuous", greedy: bool = False) -> dict:
    """Score ``model`` on ``batch``, in parallel form, or token by token with every attention layer's
    KV cache under an eviction ``policy`` (see ``recallkit.inference``).

    Args:
        batch_size: sequences per minibatch; None: about ``PARALLEL_TOKENS`` tokens each in the
            parallel form, 256 sequences token by token (a policy, greedy generation).
        policy: None (the parallel form), a ``POLICIES`` key, a ``{"name": key, ...}`` dict or a Policy.
        budget: with a policy: tokens per sequence and KV head, or a fraction of the context length
            (``full``, which never evicts, needs none: the whole context).
        mode: with a policy: ``continuous`` (evict on every step) or ``prefill`` (compress once after
            the context).
        greedy: also score free-running greedy generation of each sequence's answer through the
            recurrent ``step`` path (``recallkit.generation``): adds ``greedy_accuracy``,
            ``greedy_token_accuracy`` and ``greedy_exact_match``, overall and per slice.

    Returns:
        ``{"accuracy", "token_accuracy", "num_examples", "slices": {name: {value: {...}}}}`` where
        ``accuracy`` is the mean over sequences of the fraction of their labelled positions
        predicted exactly, ``token_accuracy`` pools all labelled positions, ``exact_match`` is the
        fraction of sequences with all of them right (teacher-forced) and ``prefill_tokens`` is
        the mean context length (longer under read-twice prompting). With a policy also
        ``policy``, ``budget``, ``mode``, ``budget_tokens`` and ``state_size`` (numbers held per
        sequence at the end).
    """
    if policy is None and budget is not None:
        raise ValueError("a budget needs an eviction policy")
    if policy is not None and (budget := make_policy(policy).budget_or_whole(budget)) is None:
        raise ValueError(f"eviction policy {policy!r} needs a budget (tokens, or a fraction of the context)")
    if greedy and policy is not None:  # checked before any work: a policy evaluation can take minutes
        raise ValueError("greedy generation runs without an eviction policy")
    was_training = model.training
    model.eval()
    info: dict = {}
    try:
        if policy is None:
            predictions = predict(model, batch, batch_size)
        else:
            predictions, info = evaluate_with_policy(model, batch, policy, budget, mode, batch_size or 256)
        generated = greedy_predictions(model, batch, batch_size or 256) if greedy else None
    finally:  # a failed evaluation must not leave a model in training switched to eval mode
        model.train(was_training)
    labels = batch.labels
    if getattr(model, "prefix_aware", False):  # a model that reads the prefix both ways sees its labels
        labels = labels_after_prefix(labels, batch.prefix_len)
    scored = labels != IGNORE_INDEX
    correct = predictions == labels
    greedy_correct = None if generated is None else generated == labels

    def scores(rows: Tensor | slice) -> dict:
        out = _accuracies(correct[rows], scored[rows])
        if greedy_correct is not None:
            out |= {f"greedy_{k}": v for k, v in _accuracies(greedy_correct[rows], scored[rows]).items()
                    if k != "num_examples"}
        return out

    metrics: dict = {**scores(slice(None)), **info}
    metrics["prefill_tokens"] = batch.prefix_len.float().mean().item()  # context read before answering
    metrics["slices"] = {
        name: {str(int(value)): scores(values == value) for value in torch.unique(values)}
        for name, values in batch.slices.items()
    }
    return metrics
