"""The task contract (docs/design.md section 5): a config that generates a :class:`Batch` from a seed."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label of positions that are not scored."""

EVAL_SEED_OFFSET = 2**31
"""Train seeds live in [0, 2^31), test seeds in [2^31, 2^32): the two splits never share a seed."""


def train_seed(seed: int) -> int:
    """Generator seed of the training split of run seed ``seed``."""
    return seed


def eval_seed(seed: int) -> int:
    """Generator seed of the test (evaluation) split of run seed ``seed`` (disjoint from every train seed)."""
    return EVAL_SEED_OFFSET + seed


@dataclass
class Batch:
    """A generated data set.

    Attributes:
        inputs: token ids, (N, T).
        labels: next-token targets, (N, T); ``IGNORE_INDEX`` where not scored.
        prefix_len: end of the context region per example, (N,).
        slices: named per-example attributes for sliced accuracy, each (N,).
    """

    inputs: Tensor
    labels: Tensor
    prefix_len: Tensor
    slices: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: Tensor | slice) -> Batch:
        return Batch(
            self.inputs[index], self.labels[index], self.prefix_len[index],
            {k: v[index] for k, v in self.slices.items()},
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.inputs.to(device), self.labels.to(device), self.prefix_len.to(device),
            {k: v.to(device) for k, v in self.slices.items()},
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Stack batches with the same sequence length and slice names."""
        return Batch(
            torch.cat([b.inputs for b in batches]), torch.cat([b.labels for b in batches]),
            torch.cat([b.prefix_len for b in batches]),
            {k: torch.cat([b.slices[k] for b in batches]) for k in batches[0].slices},
        )


def check_special_tokens(task: str, tokens: dict[str, int], content: range, vocab_size: int) -> None:
    """Refuse special tokens that are not distinct ids in [0, vocab_size) outside the content ids: a
    special id inside ``content`` would make the task ambiguous, one at or above V reach past the
    embedding."""
    ids = list(tokens.values())
    if len(set(ids)) < len(ids) or not all(0 <= i < vocab_size and i not in content for i in ids):
        names = ", ".join(f"{name}={i}" for name, i in tokens.items())
        raise ValueError(f"{task} needs distinct special tokens in [0, vocab_size={vocab_size}) outside "
                         f"its content ids [{content.start}, {content.stop}); got {names}")


def pad_examples(rows: list[list[int]], answers: list[list[tuple[int, int]]], seq_len: int, filler: int
                 ) -> tuple[Tensor, Tensor]:
    """Right-pad token rows to ``seq_len`` and label each row's answer spans for next-token prediction.

    Args:
        rows: one token list per example, each at most ``seq_len`` long.
        answers: per row, the spans ``[start, end)`` of tokens to predict: position ``t - 1`` is
            labelled with ``row[t]`` for every t in a span; nothing else is scored.
        seq_len: T.
        filler: padding token.

    Returns:
        inputs (N, T) and labels (N, T) with ``IGNORE_INDEX`` outside the answers.
    """
    inputs = torch.full((len(rows), seq_len), filler, dtype=torch.long)
    labels = torch.full((len(rows), seq_len), IGNORE_INDEX, dtype=torch.long)
    for i, (row, spans) in enumerate(zip(rows, answers)):
        inputs[i, : len(row)] = torch.tensor(row)
        for start, end in spans:
            labels[i, start - 1 : end - 1] = inputs[i, start:end]
    return inputs, labels
