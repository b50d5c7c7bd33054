"""Phone-book lookup (Repeat After Me, Jelassi et al. 2024, arXiv 2402.01032): a name's number from a book."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import Batch, pad_examples

DIGITS = 10
FIRST_DIGIT = 5
"""Token ids: 0 filler, 1 bos, 2 sep, 3 colon, 4 query, 5..14 digits, then the name letters."""


class PhonebookConfig(TaskConfig):
    """Look up a multi-token phone number by name in a book of N entries, after two worked lookups.

    A book is N entries ``name : number <sep>`` with distinct names of ``name_len`` letters (from
    ``name_alphabet`` letters) and numbers of ``number_len`` random digits. Then ``shots`` worked
    lookups and the query, each ``<query> name : number`` for distinct entries of the book; only the
    query's number is scored (``:`` predicts the first digit, each digit the next): exact match is
    the whole number. N is drawn per example from [min_entries, max_entries]. ``prefix_len`` covers
    bos and the book. Slice: ``length`` = N (entries).

    Worked example (digits are ids 5-14, letters 15..), ``PhonebookConfig(vocab_size=20,
    seq_len=32, min_entries=3, max_entries=3, name_alphabet=4, name_len=1, number_len=2,
    shots=1).generate(1, seed=0)``:

        inputs     1 17  3  5  5  2 18  3  5  6  2 16  3 13 11  2      bos, 3 entries
                   4 18  3  5  6  4 16  3 13 11  0  0  0  0  0  0      one shot, the query
        labels     unscored but at the query's ':' (13) and its first digit (11)
        prefix_len 16
    """

    name: Literal["phonebook"] = "phonebook"
    min_entries: int = Field(default=4, ge=1)
    max_entries: int = Field(default=16, ge=1)
    name_alphabet: int = Field(default=26, ge=2)
    name_len: int = Field(default=2, ge=1)
    number_len: int = Field(default=4, ge=1)
    shots: int = Field(default=2, ge=0)
    filler_token: ClassVar[int] = 0
    bos_token: ClassVar[int] = 1
    sep_token: ClassVar[int] = 2
    colon_token: ClassVar[int] = 3
    query_token: ClassVar[int] = 4
    length_unit: ClassVar[str] = "entries"
    generative: ClassVar[bool] = True

    @property
    def entry_len(self) -> int:
        """Tokens of one book entry: name, colon, number, sep."""
        return self.name_len + self.number_len + 2

    def needed_len(self, entries: int) -> int:
        """Sequence length of a book of ``entries`` entries with its lookups."""
        return 1 + (entries + self.shots + 1) * self.entry_len  # a lookup is as long as an entry

    @model_validator(mode="after")
    def _check_sizes(self) -> PhonebookConfig:
        if self.min_entries > self.max_entries:
            raise ValueError(f"phonebook needs min_entries <= max_entries; "
                             f"got {self.min_entries} > {self.max_entries}")
        if self.min_entries < self.shots + 1:
            raise ValueError(f"phonebook with {self.shots} shots needs min_entries >= {self.shots + 1} "
                             f"(distinct entries for the shots and the query); got {self.min_entries}")
        names = self.name_alphabet ** self.name_len
        if self.max_entries > names:
            raise ValueError(f"phonebook has only {names} distinct names ({self.name_alphabet} letters, "
                             f"name_len={self.name_len}) for max_entries={self.max_entries}")
        if self.vocab_size < FIRST_DIGIT + DIGITS + self.name_alphabet:
            raise ValueError(f"phonebook needs vocab_size >= {FIRST_DIGIT + DIGITS + self.name_alphabet} "
                             f"(5 special tokens, 10 digits, {self.name_alphabet} letters); "
                             f"got {self.vocab_size}")
        if self.seq_len < self.needed_len(self.max_entries):
            raise ValueError(f"phonebook with max_entries={self.max_entries} needs seq_len >= "
                             f"{self.needed_len(self.max_entries)}; got {self.seq_len}")
        return self

    @property
    def setting(self) -> str:
        return f"phonebook N={self.min_entries}-{self.max_entries} number_len={self.number_len}"

    def max_prefix_len(self) -> int:
        return 1 + self.max_entries * self.entry_len

    def length_range(self) -> tuple[int, int]:
        return self.min_entries, self.max_entries

    def at_length(self, length: int) -> PhonebookConfig:
        return self.model_validate(self.model_dump() | {"min_entries": length, "max_entries": length,
                                       "seq_len": self.needed_len(length)})

    def bits_per_unit(self) -> float:
        """An entry's number: ``number_len * log2(10)`` bits (the names are given by the query)."""
        return self.number_len * math.log2(DIGITS)

    def _distinct_names(self, rng: np.random.Generator, count: int) -> list[list[int]]:
        """``count`` distinct names, each ``name_len`` letter indices. Names are drawn as integers
        (without replacement) where their number fits numpy's int64, else letter by letter with
        rejection of repeats (astronomically rare there)."""
        A, n = self.name_alphabet, self.name_len
        if A**n <= np.iinfo(np.int64).max:
            return [[int(c) // A**j % A for j in range(n)] for c in rng.choice(A**n, count, replace=False)]
        names: dict[tuple[int, ...], None] = {}  # insertion order: seed-deterministic
        while len(names) < count:
            names.setdefault(tuple(rng.integers(0, A, n).tolist()))
        return [list(name) for name in names]

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        letters = FIRST_DIGIT + DIGITS
        rows, answers, prefix, entries = [], [], [], []
        for _ in range(num_examples):
            N = int(rng.integers(self.min_entries, self.max_entries + 1))
            names = [[letters + c for c in code] for code in self._distinct_names(rng, N)]
            numbers = (rng.integers(0, DIGITS, (N, self.number_len)) + FIRST_DIGIT).tolist()
            row = [self.bos_token]
            for name, number in zip(names, numbers):
                row += [*name, self.colon_token, *number, self.sep_token]
            prefix.append(len(row))
            lookups = rng.choice(N, self.shots + 1, replace=False)
            for e in lookups:
                row += [self.query_token, *names[e], self.colon_token, *numbers[e]]
            rows.append(row)
            answers.append([(len(row) - self.number_len, len(row))])
            entries.append(N)
        inputs, labels = pad_examples(rows, answers, self.seq_len, self.filler_token)
        return Batch(inputs, labels, torch.tensor(prefix), {"length": torch.tensor(entries)})
