"""The copy task (Repeat After Me, Jelassi et al. 2024, arXiv 2402.01032)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import Batch, check_special_tokens, pad_examples


class CopyConfig(TaskConfig):
    """Copy a random string: ``<bos> x_1..x_L <copy> x_1..x_L <eos>``.

    Characters are drawn uniformly from an alphabet of ``alphabet_size`` (D) tokens, ids 4 .. D + 3;
    ids 0-3 are filler, bos, copy and eos. L is drawn per example uniformly from [min_len, max_len].
    The answer is the copy and the eos: the ``copy`` token predicts x_1, x_i predicts x_(i+1), x_L
    predicts eos (L + 1 scored positions). ``token_accuracy`` is the character-level accuracy and
    ``exact_match`` the string-level one (the whole copy right). ``prefix_len`` = L + 1 (bos and the
    string: the context). ``examples_per_sequence`` > 1 packs several examples into one sequence, as
    the paper trains; then the ``length`` slice is the longest string of the sequence and
    ``prefix_len`` the first example's context. Slice: ``length`` = L.

    Worked example (alphabet ids 4..), ``CopyConfig(vocab_size=10, seq_len=10, alphabet_size=6,
    min_len=3, max_len=3).generate(1, seed=0)``:

        inputs     1  9  7  7  2  9  7  7  3  0       <bos> x <copy> x <eos> filler
        labels     .  .  .  .  9  7  7  3  .  .       '.' = -100 (not scored)
        prefix_len 4
    """

    name: Literal["copy"] = "copy"
    alphabet_size: int = Field(default=26, ge=2)
    min_len: int = Field(default=1, ge=1)
    max_len: int = Field(default=20, ge=1)
    examples_per_sequence: int = Field(default=1, ge=1)
    filler_token: int = 0
    bos_token: int = 1
    copy_token: int = 2
    eos_token: int = 3
    length_unit: ClassVar[str] = "characters"

    @model_validator(mode="after")
    def _check_sizes(self) -> CopyConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"copy needs min_len <= max_len; got {self.min_len} > {self.max_len}")
        if self.vocab_size < self.alphabet_size + 4:
            raise ValueError(
                f"copy with alphabet_size={self.alphabet_size} needs vocab_size >= {self.alphabet_size + 4} "
                f"(4 special tokens); got {self.vocab_size}"
            )
        check_special_tokens("copy", {"filler_token": self.filler_token, "bos_token": self.bos_token,
                                      "copy_token": self.copy_token, "eos_token": self.eos_token},
                             range(4, 4 + self.alphabet_size), self.vocab_size)
        needed = self.examples_per_sequence * (2 * self.max_len + 3)
        if self.seq_len < needed:
            raise ValueError(
                f"copy with max_len={self.max_len} x {self.examples_per_sequence} examples needs seq_len >= "
                f"{needed} (2 L + 3 per example); got {self.seq_len}"
            )
        return self

    @property
    def generative(self) -> bool:
        """Whether the answer is one span that greedy generation can produce (not when packed)."""
        return self.examples_per_sequence == 1

    @property
    def setting(self) -> str:
        return f"copy L={self.min_len}-{self.max_len} D={self.alphabet_size}"

    def max_prefix_len(self) -> int:
        return self.max_len + 1

    def length_range(self) -> tuple[int, int]:
        return self.min_len, self.max_len

    def at_length(self, length: int) -> CopyConfig:
        return self.model_validate(self.model_dump() | {"min_len": length, "max_len": length,
                                                        "examples_per_sequence": 1,
                                       "seq_len": 2 * length + 3})

    def bits_per_unit(self) -> float:
        return math.log2(self.alphabet_size)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        rows, answers, lengths, prefix = [], [], [], []
        for _ in range(num_examples):
            row: list[int] = []
            spans: list[tuple[int, int]] = []
            for _ in range(self.examples_per_sequence):
                L = int(rng.integers(self.min_len, self.max_len + 1))
                string = (rng.integers(0, self.alphabet_size, L) + 4).tolist()
                spans.append((len(row) + L + 2, len(row) + 2 * L + 3))  # the copy and eos
                row += [self.bos_token, *string, self.copy_token, *string, self.eos_token]
            rows.append(row)
            answers.append(spans)
            prefix.append(spans[0][0] - 1)  # bos and the first string
            lengths.append(max(end - start - 1 for start, end in spans))
        inputs, labels = pad_examples(rows, answers, self.seq_len, self.filler_token)
        return Batch(inputs, labels, torch.tensor(prefix), {"length": torch.tensor(lengths)})
