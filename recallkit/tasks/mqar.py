"""Multi-query associative recall (MQAR; Zoology, Arora et al. 2023, arXiv 2312.04927)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch
from recallkit.tasks.sampling import distinct_rows


def query_slot_log_probs(num_slots: int, power_a: float) -> np.ndarray:
    """log p(g), p(g) proportional to (g + 1)^(a - 1) over the query slots g = 0 .. num_slots - 1,
    normalised in log space: (g + 1)^(a - 1) itself overflows float64 from a of about 700 / log(slots)."""
    logits = (power_a - 1.0) * np.log(np.arange(1, num_slots + 1, dtype=np.float64))
    return logits - np.logaddexp.reduce(logits)


def query_slot_probs(num_slots: int, power_a: float) -> np.ndarray:
    """p(g) of :func:`query_slot_log_probs`."""
    return np.exp(query_slot_log_probs(num_slots, power_a))


class MQARConfig(TaskConfig):
    """MQAR as Zoology defines it, but for the filler.

    Keys come from [1, V/2), values from [V/2, V), token 0 is the filler. The context is
    ``num_kv_pairs`` distinct keys, each followed by its (distinct) value, repeated ``num_passes``
    times (JRT read-twice). Every key is then queried exactly once, key i at slot g_i (offset 2 g_i
    after the context), the slots drawn without replacement from p(g) ∝ (g + 1)^(a - 1). The label
    (the key's value) sits at the query key's position: next-token prediction. ``prefix_len`` is
    the end of the context; the slice ``num_kv_pairs`` records each example's pair count (a list
    of counts splits the examples evenly between them).

    The filler: Zoology's generator (``random_non_queries=True`` by default) fills the gaps with
    tokens drawn from the whole vocabulary, which may repeat the example's keys and values; here it
    is token 0, or with ``random_fillers`` tokens that are none of the example's keys and values.

    Worked example, ``MQARConfig(vocab_size=8, seq_len=8, num_kv_pairs=2).generate(1, seed=0)``:

        inputs     3  4  2  7  3  0  2  0       context: keys {3, 2}, values {4, 7}
        labels     .  .  .  .  4  .  7  .       '.' = -100 (not scored)
        prefix_len 4

    Key 3 is queried at slot 0 (position 4) and answered by its value 4; key 2 at slot 1.
    """

    name: Literal["mqar"] = "mqar"
    num_kv_pairs: int | list[int] = 8
    power_a: float = Field(default=0.01, gt=0)
    num_passes: int = Field(default=1, ge=1)
    random_fillers: bool = False

    @field_validator("num_kv_pairs")
    @classmethod
    def _positive(cls, value: int | list[int]) -> int | list[int]:
        counts = value if isinstance(value, list) else [value]
        if not counts or min(counts) < 1:
            raise ValueError("num_kv_pairs must be >= 1 (or a non-empty list of such counts)")
        return value

    @property
    def filler_token(self) -> int:
        """The filler (padding) token."""
        return 0

    def max_prefix_len(self) -> int:
        """The longest context any example has: every pair, every pass."""
        return 2 * max(self.kv_counts) * self.num_passes

    @property
    def kv_counts(self) -> list[int]:
        """Pair counts of the examples, as a list."""
        return self.num_kv_pairs if isinstance(self.num_kv_pairs, list) else [self.num_kv_pairs]

    @model_validator(mode="after")
    def _check_sizes(self) -> MQARConfig:
        n = max(self.kv_counts)
        need = 2 * n * (self.num_passes + 1)
        if self.seq_len < need:
            raise ValueError(
                f"MQAR with num_kv_pairs={n} and num_passes={self.num_passes} needs "
                f"seq_len >= 2*num_kv_pairs*(num_passes+1) = {need}; got seq_len={self.seq_len}"
            )
        if n > self.vocab_size // 2 - 1:
            raise ValueError(
                f"vocab_size={self.vocab_size} has only {self.vocab_size // 2 - 1} keys in "
                f"[1, V/2) for num_kv_pairs={n}; use vocab_size >= {2 * n + 2}"
            )
        if self.random_fillers and self.vocab_size - 2 * n < 1:
            raise ValueError("random_fillers needs a token that is neither a key nor a value")
        return self

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        counts = self.kv_counts
        sizes = [num_examples // len(counts) + (i < num_examples % len(counts)) for i in range(len(counts))]
        parts = [self._generate(rng, size, n) for size, n in zip(sizes, counts) if size]
        return Batch.concat(parts)

    def _generate(self, rng: np.random.Generator, N: int, n: int) -> Batch:
        V, T, half = self.vocab_size, self.seq_len, self.vocab_size // 2
        keys = distinct_rows(rng, N, np.arange(1, half), n)  # (N, n)
        values = distinct_rows(rng, N, np.arange(half, V), n)  # (N, n)
        pairs = np.stack([keys, values], axis=2).reshape(N, 2 * n)  # k1 v1 k2 v2 ...
        context = np.tile(pairs, (1, self.num_passes))  # (N, C)
        C = context.shape[1]
        # Query slot g sits at offset 2g after the context; sample n distinct slots per example
        # from the power law with the Gumbel top-k trick (= sequential sampling w/o replacement).
        num_slots = (T - C) // 2
        scores = query_slot_log_probs(num_slots, self.power_a) + rng.gumbel(size=(N, num_slots))
        slots = np.argsort(-scores, axis=1)[:, :n]  # (N, n): key i is queried at slot slots[:, i]
        queries = np.zeros((N, T + 1 - C), dtype=np.int64)
        np.put_along_axis(queries, 2 * slots, keys, axis=1)
        sequence = np.concatenate([context, queries], axis=1)  # (N, T + 1)
        labels = np.full((N, T + 1), IGNORE_INDEX, dtype=np.int64)
        np.put_along_axis(labels, C + 2 * slots + 1, values, axis=1)
        inputs, labels = sequence[:, :-1], labels[:, 1:]
        if self.random_fillers:
            inputs = self._fill(rng, inputs, keys, values)
        return Batch(
            torch.from_numpy(np.ascontiguousarray(inputs)),
            torch.from_numpy(np.ascontiguousarray(labels)),
            torch.full((N,), C, dtype=torch.long),
            {"num_kv_pairs": torch.full((N,), n, dtype=torch.long)},
        )

    def _fill(self, rng: np.random.Generator, inputs: np.ndarray, keys: np.ndarray,
              values: np.ndarray) -> np.ndarray:
        """Replace filler zeros by random tokens that are none of the example's keys or values."""
        N, V = inputs.shape[0], self.vocab_size
        forbidden = np.zeros((N, V), dtype=bool)
        np.put_along_axis(forbidden, np.concatenate([keys, values], axis=1), True, axis=1)
        allowed = np.argsort(forbidden, axis=1, kind="stable")[:, : V - 2 * keys.shape[1]]
        draws = np.take_along_axis(allowed, rng.integers(0, allowed.shape[1], size=inputs.shape), axis=1)
        return np.where(inputs == 0, draws, inputs)
