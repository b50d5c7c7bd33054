"""Counting: the most frequent tokens of a sequence (RULER's common and frequent words extraction, cwe and
fwe, Hsieh et al. 2024, arXiv 2404.06654), at the token level."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.lengths import MinMaxLength
from recallkit.tasks.base import IGNORE_INDEX, Batch

ANSWER = 1
"""The answer marker (token 0 is the padding)."""


class CountingConfig(MinMaxLength, TaskConfig):
    """Aggregation: read L tokens, then output the ``top_k`` most frequent ones, most frequent first.

    Token 0 is the padding, 1 the answer marker, words are [2, V). An example draws L uniformly
    from [``min_len``, ``max_len``], k = ``top_k`` distinct answer words with k distinct counts
    drawn uniformly from [r + 1, ``max_count``] (r = ``rare_count``), and fills the other L - (sum
    of those counts) positions with the other words, each at most r times (the positions drawn
    uniformly without replacement from r copies of every other word). So every answer word occurs
    more often than any other word and the answer words' counts differ: the answer, the k words by
    decreasing count, is unique (no ties). The L tokens are shuffled uniformly (``prefix_len`` = L),
    then come ``<answer> a_1 .. a_k``: the label at the marker is a_1 and at a_j is a_(j+1) (one
    contiguous span of k: scored teacher forced and by greedy generation). Slice ``length`` = L.

    Length axis: L tokens (``at_length``, up to (V - 2 - k) r + the k smallest answer counts, where
    the other words run out: the vocabulary stays the model's). ``bits_per_unit`` = log2(V - 2), the
    entropy of a word token; a state that keeps counts instead of the tokens needs less, so the
    report's bound L* is where storing the sequence fails, not counting it.

    Deviations from RULER (words in a text prompt): RULER's cwe repeats ``num_cw`` common words
    ``freq_cw`` times each (30) and the others ``freq_ucw`` times (3) and asks for the 10 common words;
    its fwe samples words from a Zipf distribution and asks for the 3 most frequent; both accept the
    words in any order. Here the answer's counts are drawn distinct and above every other word's
    (so the answer and its order are unique), at CPU scale (counts up to ``max_count``, L a few
    dozen), and the answer is scored in decreasing count order.

    Worked example, ``CountingConfig(vocab_size=12, seq_len=16, top_k=2, rare_count=1, max_count=4,
    min_len=12, max_len=12).generate(1, seed=0)``:

        inputs     8  8 10  7  5  6  6  8  3  2  6  6  1  6  8  0
        labels     .  .  .  .  .  .  .  .  .  .  .  .  6  8  .  .    '.' = -100 (not scored)
        prefix_len 12

    Word 6 occurs 4 times, 8 three times, every other word once.
    """

    name: Literal["counting"] = "counting"
    top_k: int = Field(default=3, ge=1)
    rare_count: int = Field(default=2, ge=1)
    max_count: int = Field(default=8, ge=2)
    min_len: int = Field(default=24, ge=1)
    max_len: int = Field(default=48, ge=1)
    generative: ClassVar[bool] = True
    length_unit: ClassVar[str] = "tokens"

    @property
    def filler_token(self) -> int:
        """The padding token."""
        return 0

    @model_validator(mode="after")
    def _check_sizes(self) -> CountingConfig:
        k, r, c = self.top_k, self.rare_count, self.max_count
        if c - r < k:
            raise ValueError(f"counting needs top_k distinct counts in [rare_count+1, max_count]: "
                             f"max_count - rare_count >= top_k; got {c} - {r} < {k}")
        if self.min_len > self.max_len:
            raise ValueError(f"counting needs min_len <= max_len; got {self.min_len} > {self.max_len}")
        most = k * c - k * (k - 1) // 2  # the k largest counts
        if self.min_len < most:
            raise ValueError(f"counting needs min_len >= the top_k largest counts, {c} + {c - 1} + .. = "
                             f"{most}; got min_len={self.min_len}")
        need = 2 + k + math.ceil((self.max_len - self._least_top()) / r)
        if self.vocab_size < need:
            raise ValueError(f"counting with max_len={self.max_len}, top_k={k} and rare_count={r} needs "
                             f"vocab_size >= 2 + top_k + ceil((max_len - smallest top_k counts)/rare_count)"
                             f" = {need}; got {self.vocab_size}")
        if self.seq_len < self.seq_len_for(self.max_len):
            raise ValueError(f"counting needs seq_len >= max_len + 1 + top_k = "
                             f"{self.seq_len_for(self.max_len)}; got seq_len={self.seq_len}")
        return self

    def _least_top(self) -> int:
        """The k smallest answer counts: r + 1, r + 2, .., r + k."""
        return self.top_k * (self.rare_count + 1) + self.top_k * (self.top_k - 1) // 2

    def seq_len_for(self, length: int) -> int:
        return length + 1 + self.top_k

    def max_prefix_len(self) -> int:
        """The longest sequence: max_len tokens."""
        return self.max_len

    def bits_per_unit(self) -> float:
        return math.log2(self.vocab_size - 2)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        N, k, r, W = num_examples, self.top_k, self.rare_count, self.vocab_size - 2
        lengths = rng.integers(self.min_len, self.max_len + 1, size=N)
        inputs = np.zeros((N, self.seq_len), dtype=np.int64)
        labels = np.full((N, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        for i, L in enumerate(lengths.tolist()):
            words = 2 + rng.permutation(W)
            counts = np.sort(rng.choice(np.arange(r + 1, self.max_count + 1), k, replace=False))[::-1]
            others = np.repeat(words[k:], r)  # r copies of every other word
            rest = rng.choice(others, L - int(counts.sum()), replace=False)
            sequence = rng.permutation(np.concatenate([np.repeat(words[:k], counts), rest]))
            inputs[i, :L] = sequence
            inputs[i, L] = ANSWER
            inputs[i, L + 1 : L + 1 + k] = words[:k]
            labels[i, L : L + k] = words[:k]
        return Batch(torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(lengths.copy()),
                     {"length": torch.from_numpy(lengths)})
