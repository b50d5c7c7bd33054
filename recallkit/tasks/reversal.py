"""A reversal-curse probe (Berglund et al. 2023, arXiv 2309.12288): does "A r B" teach "B r^-1 A"?"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch

FORWARD, REVERSE_TRAINED, REVERSE_HELD_OUT = 0, 1, 2
"""Values of the ``probe`` slice: ``A r ?``, ``B r^-1 ?`` of a fact trained both ways, and
``B r^-1 ?`` of a fact only ever seen forward (the reversal curse)."""


class ReversalConfig(TaskConfig):
    """Facts ``A r B`` between single-token entities, learned in the weights or read in context.

    Token ids: 0 filler, 1 bos, 2 sep, 3 relation r, 4 inverse relation r^-1, then ``num_facts``
    subject entities A_i and ``num_facts`` object entities B_i. The facts (a random bijection A_i ->
    B_j) and which of them are also stated in reverse (``paired_fraction`` of them) are fixed by
    ``facts_seed``, not by the generate seed, so the train and test splits share them. ``mode``:

    - ``train``: ``<bos>`` then ``statements`` statements ``s rel o <sep>`` drawn from every fact
      forward (``A r B``) and the paired facts in reverse (``B r^-1 A``); every object is scored
      (``rel`` predicts o). The reverse of an unpaired fact never appears.
    - ``test``: ``<bos> s rel`` with no fact in context, one question per sequence, forward or
      reverse at random over every fact: slices ``direction`` (0 forward, 1 reverse) and ``probe``
      (0 forward, 1 reverse of a paired fact, 2 reverse of a forward-only fact).
    - ``in_context``: fresh random entities per example, the fact in the prompt: ``<bos> A r B
      <sep>`` then ``A r`` -> B or ``B r^-1`` -> A (slice ``direction``); ``prefix_len`` covers the fact.

    ``prefix_len`` is 0 in ``train`` and ``test`` (there is no context: recall is parametric).

    Worked example, ``ReversalConfig(vocab_size=11, seq_len=8, num_facts=3, mode="in_context")
    .generate(1, seed=0)`` (subjects 5-7, objects 8-10):

        inputs     1  7  3  9  2  9  4  7      fact 7 r 9, question 9 r^-1 ?
        labels     .  .  .  .  .  .  7  .      the answer is the subject 7
        prefix_len 5
    """

    name: Literal["reversal"] = "reversal"
    num_facts: int = Field(default=100, ge=1)
    mode: Literal["train", "test", "in_context"] = "train"
    paired_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    statements: int = Field(default=8, ge=1, description="statements per training sequence")
    facts_seed: int = Field(default=0, ge=0, description="seed of the fact set, shared by every split")
    filler_token: ClassVar[int] = 0
    bos_token: ClassVar[int] = 1
    sep_token: ClassVar[int] = 2
    relation_token: ClassVar[int] = 3
    inverse_token: ClassVar[int] = 4
    first_entity: ClassVar[int] = 5

    @property
    def needed_len(self) -> int:
        return 1 + {"train": 4 * self.statements, "test": 3, "in_context": 7}[self.mode]  # bos + body

    @model_validator(mode="after")
    def _check_sizes(self) -> ReversalConfig:
        if self.vocab_size < self.first_entity + 2 * self.num_facts:
            raise ValueError(f"reversal with num_facts={self.num_facts} needs vocab_size >= "
                             f"{self.first_entity + 2 * self.num_facts} (5 special tokens, 2 entities per "
                             f"fact); got {self.vocab_size}")
        if self.seq_len < self.needed_len:
            raise ValueError(f"reversal in mode {self.mode!r} needs seq_len >= {self.needed_len}; "
                             f"got {self.seq_len}")
        return self

    @property
    def setting(self) -> str:
        return (f"reversal {'in context' if self.mode == 'in_context' else 'in weights'} "
                f"facts={self.num_facts}")

    def max_prefix_len(self) -> int:
        return 5 if self.mode == "in_context" else 0

    def facts(self) -> tuple[np.ndarray, np.ndarray]:
        """The fact table: object token of subject i (num_facts,) and whether fact i is paired (trained
        in reverse too) (num_facts,) bool. Depends on ``facts_seed`` and ``num_facts`` only."""
        rng = np.random.default_rng([self.facts_seed, self.num_facts])
        objects = self.first_entity + self.num_facts + rng.permutation(self.num_facts)
        paired = np.zeros(self.num_facts, dtype=bool)
        paired[rng.permutation(self.num_facts)[: round(self.paired_fraction * self.num_facts)]] = True
        return objects, paired

    def statements_pool(self) -> np.ndarray:
        """Every training statement ``(s, rel, o)``: (forward facts + paired reverses, 3)."""
        objects, paired = self.facts()
        subjects = self.first_entity + np.arange(self.num_facts)
        forward = np.stack([subjects, np.full_like(subjects, self.relation_token), objects], 1)
        reverse = np.stack([objects, np.full_like(subjects, self.inverse_token), subjects], 1)[paired]
        return np.concatenate([forward, reverse])

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        return {"train": self._train, "test": self._test,
                "in_context": self._in_context}[self.mode](rng, num_examples)

    def _sequences(self, N: int, body: np.ndarray, answers: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """bos + body (N, L) padded to seq_len; ``answers`` (N, L) bool marks tokens to predict."""
        inputs = np.full((N, self.seq_len), self.filler_token, dtype=np.int64)
        labels = np.full((N, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        inputs[:, 0] = self.bos_token
        inputs[:, 1 : 1 + body.shape[1]] = body
        rows, cols = np.nonzero(answers)
        labels[rows, cols] = body[rows, cols]  # body position j is sequence position j + 1: label at j
        return torch.from_numpy(inputs), torch.from_numpy(labels)

    def _train(self, rng: np.random.Generator, N: int) -> Batch:
        pool = self.statements_pool()
        picked = pool[rng.integers(0, len(pool), (N, self.statements))]  # (N, S, 3)
        body = np.concatenate([picked, np.full((N, self.statements, 1), self.sep_token)], 2).reshape(N, -1)
        answers = np.zeros_like(body, dtype=bool)
        answers[:, 2::4] = True  # the object of every statement
        inputs, labels = self._sequences(N, body, answers)
        return Batch(inputs, labels, torch.zeros(N, dtype=torch.long))

    def _test(self, rng: np.random.Generator, N: int) -> Batch:
        objects, paired = self.facts()
        fact = rng.integers(0, self.num_facts, N)
        reverse = rng.random(N) < 0.5
        subject = self.first_entity + fact
        body = np.where(reverse[:, None],
                        np.stack([objects[fact], np.full(N, self.inverse_token), subject], 1),
                        np.stack([subject, np.full(N, self.relation_token), objects[fact]], 1))
        answers = np.zeros_like(body, dtype=bool)
        answers[:, 2] = True
        inputs, labels = self._sequences(N, body, answers)
        probe = np.where(reverse, np.where(paired[fact], REVERSE_TRAINED, REVERSE_HELD_OUT), FORWARD)
        return Batch(inputs, labels, torch.zeros(N, dtype=torch.long),
                     {"direction": torch.from_numpy(reverse.astype(np.int64)),
                      "probe": torch.from_numpy(probe)})

    def _in_context(self, rng: np.random.Generator, N: int) -> Batch:
        subject = self.first_entity + rng.integers(0, self.num_facts, N)
        obj = self.first_entity + self.num_facts + rng.integers(0, self.num_facts, N)
        reverse = rng.random(N) < 0.5
        fact = np.stack([subject, np.full(N, self.relation_token), obj, np.full(N, self.sep_token)], 1)
        question = np.where(reverse[:, None], np.stack([obj, np.full(N, self.inverse_token), subject], 1),
                            np.stack([subject, np.full(N, self.relation_token), obj], 1))
        body = np.concatenate([fact, question], 1)
        answers = np.zeros_like(body, dtype=bool)
        answers[:, 6] = True
        inputs, labels = self._sequences(N, body, answers)
        return Batch(inputs, labels, torch.full((N,), 5, dtype=torch.long),
                     {"direction": torch.from_numpy(reverse.astype(np.int64))})
