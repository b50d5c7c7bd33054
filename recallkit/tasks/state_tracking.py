"""State tracking: the word problem of a group, output as the running product (Merrill, Petty and
Sabharwal 2024, "The illusion of state in state-space models", arXiv 2404.08819; the parity and S5
claims of DeltaProduct, Siems et al. 2025, arXiv 2502.10297, and RWKV-7, Peng et al. 2025, arXiv
2503.14456)."""

from __future__ import annotations

import itertools
import math
from functools import cache
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.lengths import MinMaxLength
from recallkit.tasks.base import IGNORE_INDEX, Batch

GROUP_SIZES = {"parity": 2, "s5": 120}


@cache
def group_elements(group: str) -> tuple[tuple[int, ...], ...]:
    """The elements in token order: parity's bits ``(0,), (1,)``; S5's permutations of (0, .., 4) as
    tuples ``p`` (``p[i]`` = the image of i) in lexicographic order (``itertools.permutations``)."""
    if group == "parity":
        return ((0,), (1,))
    return tuple(itertools.permutations(range(5)))


@cache
def product_table(group: str) -> np.ndarray:
    """``table[a, b]`` = the index of the product ``a b``: parity adds bits mod 2; S5 composes as
    functions, ``(p q)[i] = p[q[i]]`` (q is applied first)."""
    elements = group_elements(group)
    if group == "parity":
        return np.array([[0, 1], [1, 0]], dtype=np.int64)
    index = {p: i for i, p in enumerate(elements)}
    return np.array([[index[tuple(p[q[i]] for i in range(5))] for q in elements] for p in elements],
                    dtype=np.int64)


class StateTrackingConfig(MinMaxLength, TaskConfig):
    """The word problem of ``group``: read elements x_1 .. x_L and output the state s_t = x_1 x_2 .. x_t
    at every position t.

    Token 0 is the padding; group element (and state) number e is token 1 + e. ``parity``: elements
    0 and 1 (tokens 1, 2), the product is the sum mod 2, so s_t is the parity of the ones so far.
    ``s5``: the 120 permutations of (0, .., 4) as tuples p (p[i] = the image of i), numbered in
    lexicographic order (0 = the identity (0, 1, 2, 3, 4), 1 = (0, 1, 2, 4, 3), ..., tokens 1 ..
    120), multiplied as functions: (p q)[i] = p[q[i]], so s_t = s_(t-1) x_t, i.e. s_t[i] =
    s_(t-1)[x_t[i]], with s_0 the identity. An example draws L uniformly from [``min_len``,
    ``max_len``] and x_1 .. x_L uniformly from the group; inputs are x_1 .. x_L then padding, and
    the label at the position of x_t is s_t (all L positions scored, not next-token: the label is
    the state after reading the token). ``prefix_len`` = 0: there is no context, every scored
    position depends only on what the model has read, so ``read_twice`` is the identity (it repeats
    the empty context). Slice ``length`` = L.

    Length axis: L elements (``at_length``). ``bits_per_unit`` = log2 |G| is the entropy of one input
    element, so the report's information bound L* is not a limit here: the state itself needs only
    log2 |G| bits at any length (the task measures computation, not storage: parity needs a sign
    flip, S5 a non-solvable group that no diagonal or non-negative-eigenvalue recurrence of fixed
    depth can track, Merrill et al.; DeltaProduct).

    Deviations from the sources: Merrill et al. and DeltaProduct (after Grazzi et al. 2024, arXiv
    2411.12537) train at lengths up to 128-512 and test longer; at CPU scale the lengths are a few
    dozen. The S5 elements are drawn uniformly from all 120 (as the sources), parity's bits
    uniformly.

    Worked example, ``StateTrackingConfig(vocab_size=3, seq_len=8, group="parity", min_len=6,
    max_len=6).generate(1, seed=0)`` (inputs 2 = a one):

        inputs     2  2  2  1  1  1  0  0
        labels     2  1  2  2  2  2  .  .       '.' = -100 (not scored)
        prefix_len 0

    ``StateTrackingConfig(vocab_size=121, seq_len=3, group="s5", min_len=3, max_len=3).generate(1,
    seed=0)``: inputs 103 77 62, i.e. x_1 = (4, 1, 0, 2, 3), x_2 = (3, 0, 4, 1, 2), x_3 = (2, 3, 0, 4,
    1); labels 103 72 81, i.e. s_1 = x_1, s_2[i] = s_1[x_2[i]]: (2, 4, 3, 1, 0), s_3 = (3, 1, 2, 0, 4).
    """

    name: Literal["state_tracking"] = "state_tracking"
    group: Literal["parity", "s5"] = "parity"
    min_len: int = Field(default=4, ge=1)
    max_len: int = Field(default=16, ge=1)
    length_unit: ClassVar[str] = "elements"

    @property
    def filler_token(self) -> int:
        """The padding token."""
        return 0

    @property
    def setting(self) -> str:
        """Panel name with the group and lengths, e.g. ``state_tracking s5 L=2-12``: parity and S5
        are different problems, so each gets its own panel."""
        return f"state_tracking {self.group} L={self.min_len}-{self.max_len}"

    @property
    def group_size(self) -> int:
        """|G|: 2 for parity, 120 for S5."""
        return GROUP_SIZES[self.group]

    @model_validator(mode="after")
    def _check_sizes(self) -> StateTrackingConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"state_tracking needs min_len <= max_len; got {self.min_len} > {self.max_len}")
        if self.vocab_size < 1 + self.group_size:
            raise ValueError(f"state_tracking over {self.group} needs vocab_size >= 1 + |G| = "
                             f"{1 + self.group_size} (padding and one token per element); "
                             f"got {self.vocab_size}")
        if self.seq_len < self.max_len:
            raise ValueError(f"state_tracking needs seq_len >= max_len = {self.max_len}; got {self.seq_len}")
        return self

    def max_prefix_len(self) -> int:
        """No context: every position is scored on what precedes it."""
        return 0

    def seq_len_for(self, length: int) -> int:
        return max(length, 2)  # a label at every position, nothing after the word (a task has T >= 2)

    def bits_per_unit(self) -> float:
        return math.log2(self.group_size)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        N, T, table = num_examples, self.seq_len, product_table(self.group)
        lengths = rng.integers(self.min_len, self.max_len + 1, size=N)
        elements = rng.integers(self.group_size, size=(N, T))
        states = np.empty_like(elements)
        state = np.zeros(N, dtype=np.int64)  # the identity
        for t in range(T):
            state = table[state, elements[:, t]]
            states[:, t] = state
        inside = np.arange(T)[None] < lengths[:, None]
        inputs = np.where(inside, elements + 1, 0)
        labels = np.where(inside, states + 1, IGNORE_INDEX)
        return Batch(torch.from_numpy(inputs), torch.from_numpy(labels), torch.zeros(N, dtype=torch.long),
                     {"length": torch.from_numpy(lengths)})
