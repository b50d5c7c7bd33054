"""Noisy and fuzzy in-context recall (MAD, Poli et al. 2024, "Mechanistic Design and Scaling of Hybrid
Architectures", arXiv 2403.17844): associative recall with a separate noise vocabulary interleaved, and
with keys and values of several tokens."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch


class _PairRecallConfig(TaskConfig):
    """The layout shared by ``noisy_recall`` and ``fuzzy_recall`` (see each one's docstring)."""

    num_kv_pairs: int = Field(default=8, ge=1)
    frac_noise: float | list[float] = 0.2
    noise_vocab_size: int = Field(default=16, ge=1)

    @property
    def filler_token(self) -> int:
        """The padding token."""
        return 0

    @property
    def key_size(self) -> int:
        return 1

    @property
    def value_size(self) -> int:
        return 1

    @property
    def fractions(self) -> list[float]:
        """The noise fractions the examples are split between."""
        return self.frac_noise if isinstance(self.frac_noise, list) else [self.frac_noise]

    @property
    def half(self) -> int:
        """Size of the key-token range (the value range is the rest of the vocabulary)."""
        return (self.vocab_size - 1 - self.noise_vocab_size) // 2

    def noise_tokens(self, fraction: float) -> int:
        """Noise tokens in the context (and again among the queries): round(f / (1 - f) x pair tokens),
        so that they are a fraction f of each region."""
        return round(fraction / (1 - fraction) * self.num_kv_pairs * (self.key_size + self.value_size))

    def max_prefix_len(self) -> int:
        """The context at the largest noise fraction."""
        pairs = self.num_kv_pairs * (self.key_size + self.value_size)
        return pairs + max(map(self.noise_tokens, self.fractions))

    @field_validator("frac_noise")
    @classmethod
    def _check_fractions(cls, value: float | list[float]) -> float | list[float]:
        fractions = value if isinstance(value, list) else [value]
        if not fractions or not all(0 <= f < 1 for f in fractions):
            raise ValueError(f"frac_noise must be in [0, 1) (or a non-empty list of such); got {value}")
        return value

    @model_validator(mode="after")
    def _check_sizes(self) -> _PairRecallConfig:
        n, a = self.num_kv_pairs, self.key_size
        if self.half < 1 or self.half**a < n:
            smallest = 1 + self.noise_vocab_size + 2 * next(h for h in range(1, n + 1) if h**a >= n)
            raise ValueError(f"{self.name} with num_kv_pairs={n} and noise_vocab_size="
                             f"{self.noise_vocab_size} needs {n} distinct keys of {a} token(s) from "
                             f"(V - 1 - noise_vocab_size) // 2 key tokens; use vocab_size >= {smallest}; "
                             f"got {self.vocab_size}")
        need = 2 * self.max_prefix_len()
        if self.seq_len < need:
            raise ValueError(f"{self.name} with num_kv_pairs={n} and frac_noise={max(self.fractions)} needs "
                             f"seq_len >= 2 * (pair tokens + noise tokens) = {need}; "
                             f"got seq_len={self.seq_len}")
        return self

    def _keys(self, rng: np.random.Generator) -> list[tuple[int, ...]]:
        base, keys = 1 + self.noise_vocab_size, []
        seen: set[tuple[int, ...]] = set()
        while len(keys) < self.num_kv_pairs:
            key = tuple((base + rng.integers(self.half, size=self.key_size)).tolist())
            if key not in seen:
                seen.add(key)
                keys.append(key)
        return keys

    def _interleave(self, rng: np.random.Generator, units: list[list[int]], noise: int) -> list[list[int]]:
        """``units`` in order with ``noise`` single noise tokens at uniformly random places between them."""
        is_noise = np.zeros(len(units) + noise, dtype=bool)
        is_noise[rng.choice(len(is_noise), noise, replace=False)] = True
        tokens = iter((1 + rng.integers(self.noise_vocab_size, size=noise)).tolist())
        it = iter(units)
        return [[next(tokens)] if s else next(it) for s in is_noise]

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        N, a, b = num_examples, self.key_size, self.value_size
        fractions = self.fractions
        sizes = [N // len(fractions) + (j < N % len(fractions)) for j in range(len(fractions))]
        which = np.repeat(np.arange(len(fractions)), sizes)
        value_base = 1 + self.noise_vocab_size + self.half
        inputs = np.zeros((N, self.seq_len), dtype=np.int64)
        labels = np.full((N, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        prefix = np.zeros(N, dtype=np.int64)
        for i, j in enumerate(which.tolist()):
            noise = self.noise_tokens(fractions[j])
            keys = self._keys(rng)
            values = [tuple((value_base + rng.integers(self.vocab_size - value_base, size=b)).tolist())
                      for _ in keys]
            context = self._interleave(rng, [[*k, *v] for k, v in zip(keys, values)], noise)
            order = rng.permutation(len(keys)).tolist()
            queries = self._interleave(rng, [[*keys[q], *values[q]] for q in order], noise)
            row = [t for unit in context for t in unit]
            prefix[i] = len(row)
            for unit in queries:
                if len(unit) > 1:  # a query: label the key's last token and the value's first b - 1
                    labels[i, len(row) + a - 1 : len(row) + a - 1 + b] = unit[a:]
                row += unit
            inputs[i, : len(row)] = row
        percent = torch.tensor([round(100 * f) for f in fractions], dtype=torch.long)[torch.from_numpy(which)]
        pairs = torch.full((N,), self.num_kv_pairs, dtype=torch.long)
        return Batch(torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(prefix),
                     {"noise": percent, "num_kv_pairs": pairs})


class NoisyRecallConfig(_PairRecallConfig):
    """MQAR with a noise vocabulary interleaved: ``k v`` pairs and queries among noise tokens to ignore.

    Token 0 is the padding, noise tokens are [1, 1 + ``noise_vocab_size``), keys the next h =
    (V - 1 - ``noise_vocab_size``) // 2 tokens and values the rest up to V. An example draws
    n = ``num_kv_pairs`` distinct keys, each with a value drawn uniformly (values may repeat, as
    MAD's), and a noise fraction f (examples split evenly over ``frac_noise``, a float or a list;
    the slice ``noise`` is f in percent). The context is the n pairs ``k v`` with m =
    round(f / (1 - f) 2n) noise tokens (uniform over the noise range) at uniformly random places
    between pairs (a pair is never split), so noise is a fraction f of it; ``prefix_len`` = 2n + m.
    Then the n keys are queried in random order as ``k v`` (the label at k is v; teacher forced, as
    MAD's multi-query probes of a key seen before), again among m noise tokens. Slice
    ``num_kv_pairs`` (constant).

    No length axis, as ``mqar``: the size knob is the number of pairs, not a per-example length.

    Deviations from MAD's ``generate_noisy_in_context_recall_instance``: MAD fills a fixed
    ``seq_len`` with 2-token slots, each noise with probability ``frac_noise`` and otherwise a pair
    with a random key (keys repeat, each repeat probed with multi_query, or one final probe after a
    copy token); here the context states each of n distinct keys once and every key is queried
    once after it, MQAR style, so accuracy is comparable with ``mqar``; the noise count is exact
    (f of each region), noise tokens are single, and the special ids sit at the start. Only the
    values are scored, in training as at test (MAD trains on every next token, noise included, and
    scores the probed value only at test).

    Worked example, ``NoisyRecallConfig(vocab_size=12, seq_len=16, num_kv_pairs=2, frac_noise=0.5,
    noise_vocab_size=4).generate(1, seed=0)`` (noise 1-4, keys 5-7, values 8-11):

        inputs     4  7 10  6  9  3  3  4  7 10  1  2  6  9  4  3
        labels     .  .  .  .  .  .  .  . 10  .  .  .  9  .  .  .    '.' = -100 (not scored)
        prefix_len 8, slices noise 50

    The context holds 7 -> 10 and 6 -> 9 among 4 noise tokens; the queries 7 and 6 come among 4 more.
    """

    name: Literal["noisy_recall"] = "noisy_recall"


class FuzzyRecallConfig(_PairRecallConfig):
    """Associative recall over keys and values of several tokens: ``k_1 .. k_a v_1 .. v_b`` pairs.

    Layout as ``noisy_recall`` with keys of a = ``key_len`` tokens and values of b = ``value_len``
    tokens: a key is a tuple of a tokens from the key range (the n keys distinct as tuples, but they
    share single tokens, so only the whole key finds the value), a value a tuple of b tokens drawn
    uniformly from the value range. Noise (``frac_noise``, default 0 as MAD's) is m = round(f /
    (1 - f) n (a + b)) single tokens between pairs. A query ``k_1 .. k_a v_1 .. v_b`` is labelled at
    k_a with v_1 and at v_j with v_(j+1) (b scored positions, teacher forced). ``prefix_len`` =
    n (a + b) + m. Slices ``noise`` (percent) and ``num_kv_pairs`` (constant).

    No length axis, as ``mqar``: the size knob is the number of pairs.

    Deviations from MAD's ``generate_fuzzy_in_context_recall_instance``: MAD draws each key and
    value motif with 1 .. ``k_motif_size`` (``v_motif_size``) tokens during training and probes one
    key at the full size after a copy token; here every key has exactly a tokens and every value b
    (so the train and test distributions are one, and the scored span has a fixed length), all n
    keys are queried once after the context (MQAR style), and keys never repeat in the context.
    The tokens of one key or value are drawn independently, so they may repeat, as in the example
    below (MAD draws each motif as a permutation, without a repeated token). Only the values are
    scored, in training as at test (MAD trains on every next token).

    Worked example, ``FuzzyRecallConfig(vocab_size=13, seq_len=16, num_kv_pairs=2, key_len=2,
    value_len=2, frac_noise=0.0, noise_vocab_size=2).generate(1, seed=0)`` (keys 3-7, values 8-12):

        inputs     7  6  9  8  5  4  8  8  7  6  9  8  5  4  8  8
        labels     .  .  .  .  .  .  .  .  .  9  8  .  .  8  8  .    '.' = -100 (not scored)
        prefix_len 8, slices noise 0

    The pairs are (7, 6) -> (9, 8) and (5, 4) -> (8, 8), queried in that order.
    """

    name: Literal["fuzzy_recall"] = "fuzzy_recall"
    key_len: int = Field(default=2, ge=1)
    value_len: int = Field(default=2, ge=1)
    frac_noise: float | list[float] = 0.0

    @property
    def key_size(self) -> int:
        return self.key_len

    @property
    def value_size(self) -> int:
        return self.value_len
