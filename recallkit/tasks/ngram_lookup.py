"""n-gram lookup (Repeat After Me, Jelassi et al. 2024, arXiv 2402.01032): find an n-gram,
say what follows."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import Batch, check_special_tokens, pad_examples

MAX_REDRAWS = 1000
"""Redraw rounds for strings whose key n-gram is not unique before giving up with an error."""
MIN_UNIQUE_KEY = 0.05
"""Configs whose strings have a unique key less often than this are refused (with 1000 redraws an
example fails with probability 0.95^1000 ~ 5e-23)."""


class NgramLookupConfig(TaskConfig):
    """Answer the ``answer_len`` tokens that follow an ``ngram``-token key in a random string.

    The string x_1..x_L has characters drawn uniformly from ``alphabet_size`` tokens (ids 4..);
    ids 0-3 are filler, bos, sep and ans. The key g = x_p..x_(p+n-1) occurs exactly once in x and
    is followed by at least ``answer_len`` characters y (strings with a repeated key are redrawn).
    ``key_position``:

    - ``suffix``: ``<bos> x <sep> g <ans> y``; the context (``prefix_len`` = L + 1) is the string,
      the key comes after it.
    - ``prefix``: ``<bos> g <sep> x <ans> y``; the key comes first, so a fixed-state model must keep
      it while reading x; the context (``prefix_len`` = n + L + 2) is everything before ``ans``.

    ``ans`` predicts y_1, y_i predicts y_(i+1) (``answer_len`` scored positions). L is drawn per
    example from [min_len, max_len]. Slice: ``length`` = L.

    Worked example, ``NgramLookupConfig(vocab_size=10, seq_len=12, alphabet_size=6, min_len=5,
    max_len=5, ngram=2, answer_len=1).generate(1, seed=0)``:

        inputs     1  9  7  7  5  5  2  9  7  3  7  0      <bos> x <sep> g <ans> y filler
        labels     .  .  .  .  .  .  .  .  .  7  .  .      '.' = -100 (not scored)
        prefix_len 6
    """

    name: Literal["ngram_lookup"] = "ngram_lookup"
    alphabet_size: int = Field(default=26, ge=2)
    min_len: int = Field(default=10, ge=1)
    max_len: int = Field(default=30, ge=1)
    ngram: int = Field(default=3, ge=1)
    answer_len: int = Field(default=2, ge=1)
    key_position: Literal["suffix", "prefix"] = "suffix"
    filler_token: int = 0
    bos_token: int = 1
    sep_token: int = 2
    ans_token: int = 3
    length_unit: ClassVar[str] = "characters"
    generative: ClassVar[bool] = True

    @model_validator(mode="after")
    def _check_sizes(self) -> NgramLookupConfig:
        n, k = self.ngram, self.answer_len
        if self.min_len > self.max_len:
            raise ValueError(f"ngram_lookup needs min_len <= max_len; got {self.min_len} > {self.max_len}")
        if self.min_len < n + k:
            raise ValueError(f"ngram_lookup needs min_len >= ngram + answer_len = {n + k}; "
                             f"got {self.min_len}")
        if self.vocab_size < self.alphabet_size + 4:
            raise ValueError(f"ngram_lookup with alphabet_size={self.alphabet_size} needs vocab_size >= "
                             f"{self.alphabet_size + 4} (4 special tokens); got {self.vocab_size}")
        check_special_tokens("ngram_lookup", {"filler_token": self.filler_token, "bos_token": self.bos_token,
                                              "sep_token": self.sep_token, "ans_token": self.ans_token},
                             range(4, 4 + self.alphabet_size), self.vocab_size)
        # a random string has E = (L - n) D^-n other windows equal to its key (any window, overlapping
        # or not, equals it with probability D^-n), so the key is unique with probability ~exp(-E)
        unique = math.exp(-(self.max_len - n) / self.alphabet_size**n)
        if unique < MIN_UNIQUE_KEY:
            raise ValueError(f"ngram_lookup strings of length {self.max_len} over {self.alphabet_size} "
                             f"characters have a unique {n}-gram key with probability ~{unique:.1e}; raise "
                             f"alphabet_size or ngram, or lower max_len")
        if self.seq_len < self.max_len + n + k + 3:
            raise ValueError(f"ngram_lookup with max_len={self.max_len}, ngram={n}, answer_len={k} needs "
                             f"seq_len >= {self.max_len + n + k + 3}; got {self.seq_len}")
        return self

    @property
    def setting(self) -> str:
        return (f"ngram_lookup ({self.key_position}) L={self.min_len}-{self.max_len} n={self.ngram} "
                f"k={self.answer_len} D={self.alphabet_size}")

    def max_prefix_len(self) -> int:
        return self.max_len + (1 if self.key_position == "suffix" else self.ngram + 2)

    def length_range(self) -> tuple[int, int]:
        return self.min_len, self.max_len

    def at_length(self, length: int) -> NgramLookupConfig:
        needed = length + self.ngram + self.answer_len + 3
        return self.model_validate(self.model_dump() | {"min_len": length, "max_len": length,
                                                        "seq_len": needed})

    def bits_per_unit(self) -> float:
        return math.log2(self.alphabet_size)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        lengths = rng.integers(self.min_len, self.max_len + 1, num_examples)
        strings, keys = [None] * num_examples, np.zeros(num_examples, dtype=np.int64)
        for L in np.unique(lengths):
            rows = np.flatnonzero(lengths == L)
            for row, string, key in zip(rows, *self._unique_keys(rng, len(rows), int(L))):
                strings[row], keys[row] = string, key
        n, k = self.ngram, self.answer_len
        rows, answers, prefix = [], [], []
        for string, p in zip(strings, keys):
            x = (string + 4).tolist()
            g, y = x[p : p + n], x[p + n : p + n + k]
            if self.key_position == "suffix":
                row = [self.bos_token, *x, self.sep_token, *g, self.ans_token, *y]
                prefix.append(len(x) + 1)
            else:
                row = [self.bos_token, *g, self.sep_token, *x, self.ans_token, *y]
                prefix.append(len(x) + n + 2)
            rows.append(row)
            answers.append([(len(row) - k, len(row))])
        inputs, labels = pad_examples(rows, answers, self.seq_len, self.filler_token)
        return Batch(inputs, labels, torch.tensor(prefix), {"length": torch.from_numpy(lengths)})

    def _unique_keys(self, rng: np.random.Generator, count: int, L: int) -> tuple[np.ndarray, np.ndarray]:
        """``count`` strings (count, L) over [0, D) and key starts p (count,) whose n-gram occurs once."""
        n, k = self.ngram, self.answer_len
        strings = np.zeros((count, L), dtype=np.int64)
        starts = np.zeros(count, dtype=np.int64)
        todo = np.arange(count)
        for _ in range(MAX_REDRAWS):
            candidate = rng.integers(0, self.alphabet_size, (len(todo), L))
            p = rng.integers(0, L - n - k + 1, len(todo))
            windows = sliding_window_view(candidate, n, axis=1)  # (c, L - n + 1, n)
            key = windows[np.arange(len(todo)), p]  # (c, n)
            unique = (windows == key[:, None]).all(-1).sum(1) == 1
            strings[todo[unique]], starts[todo[unique]] = candidate[unique], p[unique]
            todo = todo[~unique]
            if not len(todo):
                return strings, starts
        raise ValueError(
            f"ngram_lookup could not draw strings of length {L} with a unique {n}-gram key over "
            f"{self.alphabet_size} characters; raise alphabet_size or ngram, or lower max_len"
        )
