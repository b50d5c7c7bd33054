"""Forgetting MQAR: MQAR whose keys are re-assigned later in the context (Zoology 2026 data module,
``zoology/data/forgetting_mqar.py``): the answer is the latest value, so a memory must overwrite."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch
from recallkit.tasks.mqar import query_slot_log_probs


def _smallest_vocab(n: int, u: int) -> int:
    """The smallest V with n keys in [1, V/2) and n + u distinct values in [V/2, V)."""
    V = 2
    while V // 2 - 1 < n or V - V // 2 < n + u:
        V += 1
    return V

class ForgettingMQARConfig(TaskConfig):
    """MQAR with overwrites: ``num_updates`` later statements re-assign keys; queries want the last value.

    Keys come from [1, V/2), values from [V/2, V), token 0 is the filler. The context is
    ``num_kv_pairs`` (n) distinct keys each followed by a value, then ``num_updates`` (u) update
    statements ``key value`` in random order, each re-assigning one of the n keys; a key is
    overwritten at most ``max_overwrites`` (m) times. All n + u values of an example are distinct, so
    a stale value is never the right answer. ``prefix_len`` = 2 (n + u), the whole context.

    Examples are split evenly between the overwrite classes o = 0 .. m (the slice ``overwrites``):
    one random key is overwritten exactly o times, the other u - o updates fall on the other keys
    (at most m each, uniformly over those slots), and the example queries every key overwritten
    exactly o times (at least one), in random order, at slots drawn without replacement from MQAR's
    power law p(g) ∝ (g + 1)^(a - 1), slot g at offset 2 g after the context. The label (the key's
    last value) sits at the query key's position: next-token prediction.

    Deviations from Zoology's generator (CPU scale, and slices that split accuracy by overwrites):
    Zoology overwrites each of ``num_updates`` keys once (m = 1) and queries every key; here a key
    may be overwritten up to m times, and each example queries only the keys of its overwrite class
    so that the per-example ``overwrites`` slice is exact. Zoology's new values may repeat other
    values and its fillers are random tokens; here values are distinct and the filler is 0.
    No length axis, as ``mqar``: the size knobs are the pair and update counts (``seq_len`` only
    adds room for query gaps), not a per-example length.

    Worked example, ``ForgettingMQARConfig(vocab_size=16, seq_len=12, num_kv_pairs=2, num_updates=1)
    .generate(2, seed=0)`` (overwrites 0, then 1):

        inputs     6 10  5  8  5  9  0  0  6  0  0  0    key 6 never overwritten; 5: 8 then 9
        labels     .  .  .  .  .  .  .  . 10  .  .  .    '.' = -100 (not scored)
        inputs     5 11  7 14  5 10  0  0  5  0  0  0    key 5: 11 then 10
        labels     .  .  .  .  .  .  .  . 10  .  .  .
        prefix_len 6, 6

    The first example queries key 6 (overwritten 0 times: value 10), the second key 5 (overwritten
    once: its latest value 10, not 11); both at query slot 1 (offset 2 after the context).
    """

    name: Literal["forgetting_mqar"] = "forgetting_mqar"
    num_kv_pairs: int = Field(default=8, ge=2)
    num_updates: int = Field(default=4, ge=1)
    max_overwrites: int = Field(default=1, ge=1)
    power_a: float = Field(default=0.01, gt=0)

    @property
    def filler_token(self) -> int:
        """The filler (padding) token."""
        return 0

    def max_prefix_len(self) -> int:
        """Every example's context: n pairs and u updates."""
        return 2 * (self.num_kv_pairs + self.num_updates)

    @model_validator(mode="after")
    def _check_sizes(self) -> ForgettingMQARConfig:
        n, u, m = self.num_kv_pairs, self.num_updates, self.max_overwrites
        if not m <= u <= (n - 1) * m:
            raise ValueError(
                f"forgetting_mqar needs max_overwrites <= num_updates <= (num_kv_pairs-1)*max_overwrites "
                f"(every overwrite class 0..{m} must occur) = {m}..{(n - 1) * m}; got num_updates={u}"
            )
        need = 2 * (n + u) + 2 * n
        if self.seq_len < need:
            raise ValueError(
                f"forgetting_mqar with num_kv_pairs={n} and num_updates={u} needs "
                f"seq_len >= 2*(num_kv_pairs+num_updates) + 2*num_kv_pairs = {need}; "
                f"got seq_len={self.seq_len}"
            )
        half = self.vocab_size // 2
        if n > half - 1 or n + u > self.vocab_size - half:
            raise ValueError(
                f"vocab_size={self.vocab_size} has {half - 1} keys and {self.vocab_size - half} values for "
                f"num_kv_pairs={n} keys and {n + u} distinct values; use vocab_size >= "
                f"{_smallest_vocab(n, u)}"
            )
        return self

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        classes = self.max_overwrites + 1
        sizes = [num_examples // classes + (o < num_examples % classes) for o in range(classes)]
        overwrites = np.repeat(np.arange(classes), sizes)
        n, u, m = self.num_kv_pairs, self.num_updates, self.max_overwrites
        V, T, half, C = self.vocab_size, self.seq_len, self.vocab_size // 2, self.max_prefix_len()
        log_p = query_slot_log_probs((T - C) // 2, self.power_a)
        inputs = np.zeros((num_examples, T + 1), dtype=np.int64)
        labels = np.full((num_examples, T + 1), IGNORE_INDEX, dtype=np.int64)
        for i, o in enumerate(overwrites):
            keys = rng.choice(half - 1, n, replace=False) + 1
            values = rng.choice(V - half, n + u, replace=False) + half
            anchor = int(rng.integers(n))
            others = np.array([k for k in range(n) if k != anchor for _ in range(m)])  # a slot per overwrite
            counts = np.bincount(rng.choice(others, u - o, replace=False), minlength=n)
            counts[anchor] = o
            updated = rng.permutation(np.repeat(np.arange(n), counts))  # key index of each update statement
            assigned = np.concatenate([np.arange(n), updated])  # key index of each of the n + u statements
            inputs[i, 0:C:2], inputs[i, 1:C:2] = keys[assigned], values
            last = {int(k): int(v) for k, v in zip(assigned, values)}  # the latest statement wins
            queried = rng.permutation(np.flatnonzero(counts == o))
            slots = np.argsort(-(log_p + rng.gumbel(size=log_p.shape)))[: len(queried)]
            inputs[i, C + 2 * slots] = keys[queried]
            labels[i, C + 2 * slots + 1] = [last[int(k)] for k in queried]
        return Batch(
            torch.from_numpy(np.ascontiguousarray(inputs[:, :-1])),
            torch.from_numpy(np.ascontiguousarray(labels[:, 1:])),
            torch.full((num_examples,), C, dtype=torch.long),
            {"overwrites": torch.from_numpy(overwrites)},
        )
