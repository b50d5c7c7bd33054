"""Variable tracking, multi-hop tracing through a haystack (RULER's vt, Hsieh et al. 2024, arXiv 2404.06654),
at the token level."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.lengths import MinMaxLength
from recallkit.tasks.base import IGNORE_INDEX, Batch

QUERY, ASSIGN = 1, 2
"""The query marker and the ``=`` of a statement (token 0 is the padding)."""


class VariableTrackingConfig(MinMaxLength, TaskConfig):
    """Follow a chain ``X1 = v``, ``X2 = X1``, .. through noise and answer the value of its last variable.

    Token 0 is the padding, 1 the query marker, 2 the ``=``; the rest [3, V) is split in thirds
    (third = (V - 3) // 3): noise tokens [3, 3 + third), variables [3 + third, 3 + 2 third), values
    [3 + 2 third, V). An example has h hops (examples split evenly over ``min_hops`` ..
    ``max_hops``, the slice ``hops``) and a haystack of L noise tokens (L uniform in [``min_len``,
    ``max_len``], the slice ``length``), each drawn uniformly from the noise range. It draws
    ``num_chains`` chains of h + 1 distinct variables each (all distinct) and one distinct value per
    chain; chain c is the statements ``X1 = v_c``, ``X2 = X1``, .., ``X(h+1) = Xh`` (3 tokens each).
    The statements of all chains are interleaved at random, each chain keeping its order, and
    placed at uniformly random gaps of the haystack (a statement is never split). Chain 0 is
    queried, the others are distractors: after the context come ``<query> X(h+1)`` and the label at
    ``X(h+1)`` is v_0 (next-token prediction). ``prefix_len`` = the context, L + 3 ``num_chains``
    (h + 1).

    Length axis: L haystack tokens (``at_length``). ``bits_per_unit`` = log2(noise tokens) is the
    haystack's entropy per token, which the answer does not depend on: the report's bound L* marks
    where a state could no longer hold the whole haystack, so a model that stores everything fails
    there, one that keeps only the statements does not.

    Deviations from RULER's vt (text, natural-language haystack): tokens, not words, and a haystack of
    uniform noise tokens instead of repeated sentences or essays; RULER asks for every variable that
    holds the value (substring match), here the value of the chain's last variable, one token (as
    recallkit's ``variable_tracking_text``), which needs the same h hops back through the context;
    RULER's chains use the same count ``num_chains`` and ``num_hops``, here the hops vary between
    examples so that accuracy can be sliced by hops.

    Worked example, ``VariableTrackingConfig(vocab_size=15, seq_len=20, num_chains=2, min_hops=1,
    max_hops=1, min_len=4, max_len=4).generate(1, seed=0)`` (noise 3-6, variables 7-10, values
    11-14):

        inputs     6  4  7  2 11 10  2 14  6  8  2  7  9  2 10  5  1  9  0  0
        labels     .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  .  . 14  .  .    '.' = -100 (not scored)
        prefix_len 16

    Chain 0 is ``10 = 14``, ``9 = 10`` (queried: 9 holds 14); chain 1 is ``7 = 11``, ``8 = 7``.
    """

    name: Literal["variable_tracking"] = "variable_tracking"
    num_chains: int = Field(default=2, ge=1)
    min_hops: int = Field(default=1, ge=1)
    max_hops: int = Field(default=4, ge=1)
    min_len: int = Field(default=8, ge=0)
    max_len: int = Field(default=32, ge=0)
    length_unit: ClassVar[str] = "tokens"

    @property
    def filler_token(self) -> int:
        """The padding token."""
        return 0

    @property
    def third(self) -> int:
        """Size of each of the noise, variable and value ranges."""
        return (self.vocab_size - 3) // 3

    def _context_len(self, length: int) -> int:
        return length + 3 * self.num_chains * (self.max_hops + 1)

    @model_validator(mode="after")
    def _check_sizes(self) -> VariableTrackingConfig:
        if self.min_hops > self.max_hops:
            raise ValueError(f"variable_tracking needs min_hops <= max_hops; "
                             f"got {self.min_hops} > {self.max_hops}")
        if self.min_len > self.max_len:
            raise ValueError(f"variable_tracking needs min_len <= max_len; "
                             f"got {self.min_len} > {self.max_len}")
        variables = self.num_chains * (self.max_hops + 1)
        if self.third < variables:
            raise ValueError(f"variable_tracking with num_chains={self.num_chains} and "
                             f"max_hops={self.max_hops} needs {variables} variables in a third of [3, V); "
                             f"use vocab_size >= {3 + 3 * variables}; got {self.vocab_size}")
        need = self.seq_len_for(self.max_len)
        if self.seq_len < need:
            raise ValueError(f"variable_tracking needs seq_len >= max_len + 3*num_chains*(max_hops+1) + 2 = "
                             f"{need}; got seq_len={self.seq_len}")
        return self

    def max_prefix_len(self) -> int:
        """The longest context: max_len noise tokens and every chain at max_hops."""
        return self._context_len(self.max_len)

    def seq_len_for(self, length: int) -> int:
        return self._context_len(length) + 2  # the query: its token and the variable

    def bits_per_unit(self) -> float:
        return math.log2(self.third)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        N, C, third = num_examples, self.num_chains, self.third
        classes = self.max_hops - self.min_hops + 1
        hops = self.min_hops + np.repeat(np.arange(classes), [N // classes + (h < N % classes)
                                                              for h in range(classes)])
        lengths = rng.integers(self.min_len, self.max_len + 1, size=N)
        inputs = np.zeros((N, self.seq_len), dtype=np.int64)
        labels = np.full((N, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        prefix = np.zeros(N, dtype=np.int64)
        for i, (h, L) in enumerate(zip(hops.tolist(), lengths.tolist())):
            names = (3 + third + rng.choice(third, C * (h + 1), replace=False)).reshape(C, h + 1)
            values = 3 + 2 * third + rng.choice(self.vocab_size - 3 - 2 * third, C, replace=False)
            chains = [[[names[c, 0], ASSIGN, values[c]]]
                      + [[names[c, k + 1], ASSIGN, names[c, k]] for k in range(h)] for c in range(C)]
            order = rng.permutation(np.repeat(np.arange(C), h + 1))  # which chain's next statement comes
            statements = [chains[c].pop(0) for c in order.tolist()]
            is_statement = np.zeros(L + len(statements), dtype=bool)
            is_statement[rng.choice(len(is_statement), len(statements), replace=False)] = True
            noise = iter((3 + rng.integers(third, size=L)).tolist())
            it = iter(statements)
            row = [t for s in is_statement for t in (next(it) if s else [next(noise)])]
            row += [QUERY, int(names[0, h])]
            inputs[i, : len(row)] = row
            labels[i, len(row) - 1] = values[0]
            prefix[i] = len(row) - 2
        return Batch(torch.from_numpy(inputs), torch.from_numpy(labels), torch.from_numpy(prefix),
                     {"hops": torch.from_numpy(hops), "length": torch.from_numpy(lengths)})
