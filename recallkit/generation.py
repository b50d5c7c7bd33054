"""Free-running greedy generation of a task's answer through the recurrent ``step`` path."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from recallkit.model import LanguageModel
from recallkit.tasks.base import IGNORE_INDEX, Batch


def answer_spans(labels: Tensor) -> list[tuple[int, int]]:
    """Per sequence, the scored positions ``[start, end)`` of its one contiguous answer: labels (N, T).

    Raises:
        ValueError: when a sequence has no scored position or several separate answers.
    """
    spans = []
    for i, row in enumerate((labels != IGNORE_INDEX).tolist()):
        positions = [t for t, scored in enumerate(row) if scored]
        if not positions or positions[-1] - positions[0] + 1 != len(positions):
            raise ValueError(f"greedy generation needs one contiguous answer per sequence; sequence {i} has "
                             f"scored positions {positions[:8]}{'...' if len(positions) > 8 else ''}")
        spans.append((positions[0], positions[-1] + 1))
    return spans


@torch.no_grad()
def greedy_predictions(model: LanguageModel, batch: Batch, batch_size: int = 256) -> Tensor:
    """What the model generates at each answer position when it reads its own output.

    For a sequence whose answer occupies positions [s, e): prefill the inputs up to and including
    position s, take the argmax as the token at s + 1, feed it back through ``model.step``, and so
    on to e - 1. Teacher forcing instead reads the true tokens; both agree exactly when the model
    gets every answer token right.

    Args:
        model: any model (recurrent step path; prefix-aware mixers get the batch's ``prefix_len``).
        batch: N sequences, each with one contiguous scored answer.
        batch_size: sequences per forward call.

    Returns:
        (N, T) predictions: the generated tokens at the scored positions, -1 elsewhere.
    """
    device = model.embed.weight.device
    predictions = torch.full_like(batch.labels, -1)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, span in enumerate(answer_spans(batch.labels)):
        groups[span].append(i)
    for (start, end), members in groups.items():
        for chunk in range(0, len(members), batch_size):
            rows = torch.tensor(members[chunk : chunk + batch_size])
            part = batch[rows].to(device)
            logits, state = model.prefill(part.inputs[:, : start + 1], part.prefix_len)
            token = logits[:, -1].argmax(-1)  # (b,)
            generated = [token]
            for _ in range(start + 1, end):
                logits, state = model.step(token, state)
                token = logits.argmax(-1)
                generated.append(token)
            predictions[rows, start:end] = torch.stack(generated, 1).cpu()
    return predictions
