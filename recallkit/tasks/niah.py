"""Needles in a haystack among near-identical needles, at the token level (RULER's niah_multikey,
niah_multivalue and niah_multiquery, Hsieh et al. 2024, arXiv 2404.06654)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.lengths import MinMaxLength
from recallkit.tasks.base import IGNORE_INDEX, Batch

QUERY = 1
"""The query marker (token 0 is the padding)."""


class NiahConfig(MinMaxLength, TaskConfig):
    """Recall the values of multi-token keys from a haystack that also holds needles with near-identical keys.

    Token 0 is the padding, 1 the query marker; the rest [2, V) is split in thirds (third =
    (V - 2) // 3): noise tokens [2, 2 + third), key tokens [2 + third, 2 + 2 third), values
    [2 + 2 third, V). A needle is ``k_1 .. k_m v``: a key of m = ``key_len`` key tokens and one
    value. An example draws a haystack of L noise tokens (L uniform in [``min_len``, ``max_len``],
    each token uniform over the noise range) and these needles, every value distinct:

    - ``num_queries`` (q, RULER's multiquery) queried keys, distinct, each in ``num_values`` (n,
      RULER's multivalue) needles with n different values;
    - ``num_distractors`` (RULER's multikey) needles whose key shares the first m - 1 tokens of a
      queried key (queried key j % q for distractor j) and differs in the last one: only the whole
      key tells them apart. No two needle keys of an example are equal unless they are one queried
      key's n needles.

    The needles go into the L + 1 gaps of the haystack (gap g = after g noise tokens): the queried
    needles into the gap nearest ``depth`` x L (``depth=None``: each into a uniformly random gap),
    the distractors into uniformly random gaps; needles sharing a gap are in random order. After the
    context come the q queries in random order, each ``<query> k_1 .. k_m v_1 .. v_n``: the label at
    k_m is the key's first value in context order and the label at v_i is v_(i+1) (n scored
    positions per query, teacher forced; v_n is read but not scored). ``prefix_len`` = the context,
    L + (q n + ``num_distractors``) (m + 1). Slices: ``depth`` = where the earliest queried needle
    sits, its gap g / L rounded to the nearest quarter, in percent (0, 25, 50, 75, 100; 0 when L = 0), and
    ``length`` = L.

    Length axis: L haystack tokens (``at_length``). ``bits_per_unit`` = log2(noise tokens) is the
    haystack's entropy per token, which the answer does not depend on: the report's bound L* marks
    where a state could no longer hold the whole haystack (a model that stores everything fails
    there, one that stores only the needles does not).

    Deviations from RULER (text): tokens instead of words and numbers, a haystack of uniform noise
    tokens instead of repeated sentences or essays, keys of ``key_len`` tokens; RULER's multikey
    distractors have unrelated random keys, here they share all but the last token with a queried
    key (harder, as recallkit's ``niah_text``); RULER scores the values by substring match in any
    order, here in context order by next-token prediction; RULER's depths are a grid per needle,
    here all queried needles go to one depth (or uniform).

    Worked example, ``NiahConfig(vocab_size=14, seq_len=20, key_len=2, num_distractors=1, min_len=6,
    max_len=6, depth=0.5).generate(1, seed=0)`` (noise 2-5, key tokens 6-9, values 10-13):

        inputs     9  7 10  2  4  4  9  8 11  5  4  4  1  9  8 11  0  0  0  0
        labels     .  .  .  .  .  .  .  .  .  .  .  .  .  . 11  .  .  .  .  .    '.' = -100 (not scored)
        prefix_len 12, slices depth 50, length 6

    The queried needle ``9 8 11`` sits after 3 noise tokens (gap 3 of 6: depth 50); the distractor
    ``9 7 10`` shares its first key token 9 and differs in the last.
    """

    name: Literal["niah"] = "niah"
    key_len: int = Field(default=2, ge=2)
    num_queries: int = Field(default=1, ge=1)
    num_values: int = Field(default=1, ge=1)
    num_distractors: int = Field(default=3, ge=0)
    min_len: int = Field(default=16, ge=0)
    max_len: int = Field(default=64, ge=0)
    depth: float | None = Field(default=None, ge=0, le=1)
    length_unit: ClassVar[str] = "tokens"

    @property
    def filler_token(self) -> int:
        """The padding token."""
        return 0

    @property
    def setting(self) -> str:
        """Panel name with the needles, e.g. ``niah 1 needle + 3 distractors T=64``: settings that
        differ in distractors (the knob the task is about) get their own panels."""
        needles = self.num_queries * self.num_values
        return (f"niah {needles} needle{'s' * (needles > 1)} + {self.num_distractors} distractors "
                f"T={self.seq_len}")

    @property
    def third(self) -> int:
        """Size of each of the noise, key-token and value ranges."""
        return (self.vocab_size - 2) // 3

    @property
    def num_needles(self) -> int:
        """Needles per example: q n queried and the distractors."""
        return self.num_queries * self.num_values + self.num_distractors

    def _context_len(self, length: int) -> int:
        return length + self.num_needles * (self.key_len + 1)

    def seq_len_for(self, length: int) -> int:
        return self._context_len(length) + self.num_queries * (1 + self.key_len + self.num_values)

    @model_validator(mode="after")
    def _check_sizes(self) -> NiahConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"niah needs min_len <= max_len; got {self.min_len} > {self.max_len}")
        q = self.num_queries
        per_key = -(-self.num_distractors // q)  # distractors sharing one queried key's prefix
        need = max(q + per_key, self.num_needles)
        if self.third < need:
            raise ValueError(f"niah with num_queries={q}, num_values={self.num_values} and num_distractors="
                             f"{self.num_distractors} needs {need} key tokens and values in each third of "
                             f"[2, V); use vocab_size >= {2 + 3 * need}; got {self.vocab_size}")
        need = self.seq_len_for(self.max_len)
        if self.seq_len < need:
            raise ValueError(f"niah needs seq_len >= max_len + needles*(key_len+1) + num_queries*(1+key_len+"
                             f"num_values) = {need}; got seq_len={self.seq_len}")
        return self

    def max_prefix_len(self) -> int:
        """The longest context: max_len noise tokens and every needle."""
        return self._context_len(self.max_len)

    def bits_per_unit(self) -> float:
        return math.log2(self.third)

    def _keys(self, rng: np.random.Generator) -> list[tuple[int, ...]]:
        """The q queried keys, then the distractor keys (each a queried key with another last token)."""
        m, q, base = self.key_len, self.num_queries, 2 + self.third
        keys: list[tuple[int, ...]] = []
        while len(keys) < q:
            key = tuple((base + rng.integers(self.third, size=m)).tolist())
            if key not in keys:
                keys.append(key)
        for j in range(self.num_distractors):
            prefix = keys[j % q][:-1]
            taken = {k[-1] for k in keys if k[:-1] == prefix}
            free = [t for t in range(base, base + self.third) if t not in taken]
            keys.append((*prefix, int(rng.choice(free))))
        return keys

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        N, q, n, third = num_examples, self.num_queries, self.num_values, self.third
        lengths = rng.integers(self.min_len, self.max_len + 1, size=N)
        inputs = np.zeros((N, self.seq_len), dtype=np.int64)
        labels = np.full((N, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        prefix = np.zeros(N, dtype=np.int64)
        depths = np.zeros(N, dtype=np.int64)
        for i, L in enumerate(lengths.tolist()):
            keys = self._keys(rng)
            values = (2 + 2 * third + rng.choice(self.vocab_size - 2 - 2 * third, self.num_needles,
                                                 replace=False)).tolist()
            owners = [k for k in range(q) for _ in range(n)] + list(range(q, len(keys)))  # key of each needle
            if self.depth is None:
                gaps = rng.integers(L + 1, size=self.num_needles)
            else:
                gaps = np.concatenate([np.full(q * n, round(self.depth * L)),
                                       rng.integers(L + 1, size=self.num_distractors)])
            order = np.lexsort((rng.random(self.num_needles), gaps))  # by gap, ties in random order
            noise = (2 + rng.integers(third, size=L)).tolist()
            row: list[int] = []
            done = 0
            for g in range(L + 1):
                while done < len(order) and gaps[order[done]] == g:
                    needle = int(order[done])
                    row += [*keys[owners[needle]], values[needle]]
                    done += 1
                if g < L:
                    row.append(noise[g])
            prefix[i] = len(row)
            depths[i] = 0 if L == 0 else math.floor(4 * gaps[: q * n].min() / L + 0.5) * 25
            in_context = [values[int(j)] for j in order]  # the values in context order
            for k in rng.permutation(q).tolist():
                answer = [v for v in in_context if owners[values.index(v)] == k]
                start = len(row) + self.key_len
                row += [QUERY, *keys[k], *answer]
                labels[i, start : start + n] = answer
            inputs[i, : len(row)] = row
        return Batch(torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(prefix),
                     {"depth": torch.from_numpy(depths), "length": torch.from_numpy(lengths)})
