"""Set disjointness with exactly one shared element (Just Read Twice, Arora et al. 2024, arXiv 2407.05483)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch
from recallkit.tasks.sampling import distinct_rows

SizePairs = tuple[int, int] | list[tuple[int, int]]
"""One ``(|A|, |B|)`` pair or a list of them."""

def _shuffle_rows(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Permute every row of x (n, k) independently."""
    return np.take_along_axis(x, np.argsort(rng.random(x.shape), axis=1), axis=1)


class SetDisjointnessConfig(TaskConfig):
    """Find the one element two sets share: ``[start] A [sep] B [answer_sep]`` -> the shared token.

    Each example draws sets A and B of sizes ``(|A|, |B|)`` from the element tokens (every id in
    [0, V) except the four special tokens), distinct within each set, with exactly one element in
    common, both sets in random order. The sequence is ``start_token, A, sep_token, B,
    answer_sep_token``, right-padded to ``seq_len`` with ``filler_token``; the label (the shared
    element) sits at the ``answer_sep`` position: the model reads ``answer_sep`` and must output the
    shared token (next-token prediction); every other position is unscored.

    ``prefix_len`` = |A| + |B| + 2: the context is ``start, A, sep, B`` (what JRT repeats and what a
    prefix-aware mixer may read non-causally); ``answer_sep`` is the first token after it, so the
    answer is never visible inside the prefix. ``set_sizes`` is one ``(|A|, |B|)`` pair or a list of
    pairs; examples are split evenly between the pairs, so ``[(4, 16), (16, 4)]`` mixes short-first
    and long-first examples. Slices: ``size_a``, ``size_b`` and ``long_first`` (1 when |A| > |B|).

    Worked example (special tokens: filler 0, start 1, sep 2, answer_sep 3),
    ``SetDisjointnessConfig(vocab_size=12, seq_len=10, set_sizes=(2, 4)).generate(1, seed=0)``:

        inputs     1  7  6  2  5  4  7 10  3  0       A = {7, 6}, B = {5, 4, 7, 10}
        labels     .  .  .  .  .  .  .  .  7  .       '.' = -100 (not scored)
        prefix_len 8

    The shared element 7 is the label at the ``answer_sep`` position (8); position 9 is filler.
    """

    name: Literal["set_disjointness"] = "set_disjointness"
    set_sizes: SizePairs = Field(default_factory=lambda: [(4, 16), (16, 4)])
    filler_token: int = Field(default=0, ge=0)
    start_token: int = Field(default=1, ge=0)
    sep_token: int = Field(default=2, ge=0)
    answer_sep_token: int = Field(default=3, ge=0)

    @field_validator("set_sizes")
    @classmethod
    def _positive(cls, value: SizePairs) -> SizePairs:
        pairs = value if isinstance(value, list) else [value]
        if not pairs or min(min(p) for p in pairs) < 1:
            raise ValueError(
                "set_sizes must be a (|A|, |B|) pair of sizes >= 1 (or a non-empty list of such pairs)"
            )
        return value

    @property
    def size_pairs(self) -> list[tuple[int, int]]:
        """The ``(|A|, |B|)`` pairs of the examples, as a list."""
        return self.set_sizes if isinstance(self.set_sizes, list) else [self.set_sizes]

    @property
    def setting(self) -> str:
        """Panel name with the set sizes, e.g. ``set_disjointness |A|,|B|=16,4 T=32``: the order of
        the sets is the point of the task, so short-first and long-first get their own panels."""
        sizes = " ".join(f"{a},{b}" for a, b in self.size_pairs)
        return f"set_disjointness |A|,|B|={sizes} T={self.seq_len}"

    @property
    def special_tokens(self) -> list[int]:
        """Reserved ids: filler, start, sep, answer_sep."""
        return [self.filler_token, self.start_token, self.sep_token, self.answer_sep_token]

    def max_prefix_len(self) -> int:
        """Longest context (``start, A, sep, B``) any example can have: max |A| + |B| + 2."""
        return max(a + b for a, b in self.size_pairs) + 2

    @model_validator(mode="after")
    def _check_sizes(self) -> SetDisjointnessConfig:
        special, V = self.special_tokens, self.vocab_size
        if len(set(special)) < 4 or max(special) >= V:
            raise ValueError(
                f"filler, start, sep and answer_sep tokens must be 4 distinct ids in "
                f"[0, vocab_size={V}); got {special}"
            )
        a, b = max(self.size_pairs, key=sum)
        if self.seq_len < a + b + 3:
            raise ValueError(
                f"set_disjointness with set sizes ({a}, {b}) needs seq_len >= |A|+|B|+3 = {a + b + 3}; "
                f"got seq_len={self.seq_len}"
            )
        if a + b - 1 > V - 4:
            raise ValueError(
                f"vocab_size={V} has only {V - 4} element tokens (4 are special) for set sizes ({a}, {b}), "
                f"which need |A|+|B|-1 = {a + b - 1} distinct elements; use vocab_size >= {a + b + 3}"
            )
        return self

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        pairs = self.size_pairs
        sizes = [num_examples // len(pairs) + (i < num_examples % len(pairs)) for i in range(len(pairs))]
        return Batch.concat([self._generate(rng, n, a, b) for n, (a, b) in zip(sizes, pairs) if n])

    def _generate(self, rng: np.random.Generator, N: int, a: int, b: int) -> Batch:
        elements = np.setdiff1d(np.arange(self.vocab_size), self.special_tokens)  # (V - 4,)
        drawn = distinct_rows(rng, N, elements, a + b - 1)  # (N, a + b - 1): shared, A-only, B-only
        shared = drawn[:, :1]  # (N, 1)
        set_a = _shuffle_rows(rng, drawn[:, :a])  # (N, a)
        set_b = _shuffle_rows(rng, np.concatenate([shared, drawn[:, a:]], axis=1))  # (N, b)
        marks = np.array([self.start_token, self.sep_token, self.answer_sep_token])[None].repeat(N, 0)
        prompt = np.concatenate(  # (N, a + b + 3): start A sep B answer_sep
            [marks[:, :1], set_a, marks[:, 1:2], set_b, marks[:, 2:]], axis=1
        )
        inputs = np.full((N, self.seq_len), self.filler_token, dtype=np.int64)
        inputs[:, : a + b + 3] = prompt
        labels = np.full((N, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        labels[:, a + b + 2] = shared[:, 0]  # at answer_sep: predict the shared element
        ones = torch.ones(N, dtype=torch.long)
        return Batch(
            torch.from_numpy(inputs), torch.from_numpy(labels), ones * (a + b + 2),
            {"size_a": ones * a, "size_b": ones * b, "long_first": ones * int(a > b)},
        )
