"""Compositional MQAR: MQAR with two-token keys (Zoology 2026 data module, ``compositional_ar.py``): a
value is bound to a pair (k1, k2) and neither half alone identifies it."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch
from recallkit.tasks.mqar import query_slot_log_probs
from recallkit.tasks.sampling import distinct_rows


def _fitting_vocab(g: int, at_least: int = 3) -> int:
    """The smallest V >= ``at_least`` with g first halves in [1, V/3) and g^2 values in [2V/3, V).
    Not monotone in V: V = 3t has t values and V = 3t - 1 has t + 1 (23 fits a 3 x 3 grid, 24 not)."""
    V = max(3, at_least)
    while V // 3 - 1 < g or V - 2 * (V // 3) < g * g:
        V += 1
    return V


class CompositionalMQARConfig(TaskConfig):
    """MQAR over compound keys ``(k1, k2)`` laid out as a grid, so that only both halves find the value.

    The vocabulary is split in thirds: first halves k1 from [1, V/3), second halves k2 from
    [V/3, 2V/3), values from [2V/3, V); token 0 is the filler (V/3 = ``vocab_size // 3``). An
    example draws g distinct k1 and g distinct k2 (g^2 = ``num_kv_pairs``) and binds every one of
    the g^2 pairs (k1, k2) to a distinct value: each k1 appears with g different k2 and values, and
    each k2 with g different k1, so no single half determines a value. The context is the g^2
    triples ``k1 k2 v`` in random order (``prefix_len`` = 3 g^2). Every pair is then queried once as
    ``k1 k2`` at query slot s (offset 3 s after the context), the slots drawn without replacement from
    MQAR's power law p(s) ∝ (s + 1)^(a - 1); the label (the pair's value) sits at the k2 position:
    next-token prediction. Slice ``num_kv_pairs`` (constant: the config has one size).

    As Zoology's generator, except: values are distinct (Zoology's are too) and the filler is 0
    (Zoology replaces fillers with random tokens by default). No length axis, as ``mqar``: the size
    knob is the number of pairs, not a per-example length.

    Worked example, ``CompositionalMQARConfig(vocab_size=15, seq_len=24, num_kv_pairs=4)
    .generate(1, seed=0)``:

        inputs     3  9 10  4  7 12  3  7 14  4  9 11  4  7  0  4  9  0  3  9  0  3  7  0
        labels     .  .  .  .  .  .  .  .  .  .  .  .  . 12  .  . 11  .  . 10  .  . 14  .
        prefix_len 12                                       '.' = -100 (not scored)

    The grid is {3, 4} x {7, 9}: k1 = 3 goes with 10 (after 9) and 14 (after 7), k2 = 9 with 10
    (after 3) and 11 (after 4). The query ``4 7`` at slot 0 is answered 12 at the 7.
    """

    name: Literal["compositional_mqar"] = "compositional_mqar"
    num_kv_pairs: int = Field(default=4, ge=4)
    power_a: float = Field(default=0.01, gt=0)

    @property
    def filler_token(self) -> int:
        """The filler (padding) token."""
        return 0

    @property
    def grid_size(self) -> int:
        """g: distinct first and second halves per example (``num_kv_pairs`` = g^2)."""
        return math.isqrt(self.num_kv_pairs)

    def max_prefix_len(self) -> int:
        """Every example's context: the g^2 triples."""
        return 3 * self.num_kv_pairs

    @model_validator(mode="after")
    def _check_sizes(self) -> CompositionalMQARConfig:
        n, g, third = self.num_kv_pairs, self.grid_size, self.vocab_size // 3
        if g * g != n:
            raise ValueError(f"compositional_mqar needs num_kv_pairs = g^2 (a g x g grid of keys: 4, 9, "
                             f"16, ...); got {n}")
        if self.seq_len < 6 * n:
            raise ValueError(f"compositional_mqar with num_kv_pairs={n} needs seq_len >= 6*num_kv_pairs = "
                             f"{6 * n} (3 per triple, 3 per query); got seq_len={self.seq_len}")
        if g > third - 1 or n > self.vocab_size - 2 * third:
            raise ValueError(f"vocab_size={self.vocab_size} has {third - 1} first halves in [1, V/3) and "
                             f"{self.vocab_size - 2 * third} values for a {g}x{g} grid; "
                             f"use vocab_size={_fitting_vocab(g, self.vocab_size)} (the next that fits; "
                             f"the smallest is {_fitting_vocab(g)})")
        return self

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        N, n, g, V, T = num_examples, self.num_kv_pairs, self.grid_size, self.vocab_size, self.seq_len
        third, C = V // 3, self.max_prefix_len()
        k1_set = distinct_rows(rng, N, np.arange(1, third), g)  # (N, g)
        k2_set = distinct_rows(rng, N, np.arange(third, 2 * third), g)  # (N, g)
        order = np.argsort(rng.random((N, n)), axis=1)  # random order of the grid's cells
        k1 = np.take_along_axis(np.repeat(k1_set, g, axis=1), order, axis=1)  # (N, n)
        k2 = np.take_along_axis(np.tile(k2_set, (1, g)), order, axis=1)  # (N, n)
        values = distinct_rows(rng, N, np.arange(2 * third, V), n)  # (N, n)
        context = np.stack([k1, k2, values], axis=2).reshape(N, C)
        num_slots = (T - C) // 3
        scores = query_slot_log_probs(num_slots, self.power_a) + rng.gumbel(size=(N, num_slots))
        slots = np.argsort(-scores, axis=1)[:, :n]  # (N, n): pair i is queried at slot slots[:, i]
        queries = np.zeros((N, T + 1 - C), dtype=np.int64)
        np.put_along_axis(queries, 3 * slots, k1, axis=1)
        np.put_along_axis(queries, 3 * slots + 1, k2, axis=1)
        sequence = np.concatenate([context, queries], axis=1)  # (N, T + 1)
        labels = np.full((N, T + 1), IGNORE_INDEX, dtype=np.int64)
        np.put_along_axis(labels, C + 3 * slots + 2, values, axis=1)
        return Batch(
            torch.from_numpy(np.ascontiguousarray(sequence[:, :-1])),
            torch.from_numpy(np.ascontiguousarray(labels[:, 1:])),
            torch.full((N,), C, dtype=torch.long),
            {"num_kv_pairs": torch.full((N,), n, dtype=torch.long)},
        )
