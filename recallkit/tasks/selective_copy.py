"""Selective copying (MAD, Poli et al. 2024, arXiv 2403.17844; Mamba, Gu and Dao 2023, arXiv 2312.00752):
copy the data tokens scattered among noise tokens, in order."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.lengths import MinMaxLength
from recallkit.tasks.base import IGNORE_INDEX, Batch


class SelectiveCopyConfig(MinMaxLength, TaskConfig):
    """Selective copying: ``region (L data tokens among noise) <copy> blank x (L - 1)`` -> the data tokens.

    Token 0 is the blank (the noise token, the answer slots and the padding), token 1 the copy
    token, and data tokens come from the alphabet 2 .. V - 1 (D = V - 2 of them), drawn uniformly
    with replacement. An example draws L uniformly from [``min_len``, ``max_len``] and places its L
    data tokens at L positions chosen uniformly among the L (1 + ``noise_per_token``) positions of
    the region, the rest blank. The copy token follows the region, then L - 1 blanks: the copy token
    predicts x_1 and the i-th blank predicts x_(i+1) (L scored positions). The answer slots read
    blanks, not the data, so the model must count rather than continue its own output (as MAD; not
    generative). ``prefix_len`` = the region, L (1 + ``noise_per_token``). Slice ``length`` = L.

    Length axis: L data tokens (``at_length``; the region grows with L, so the noise density is the
    same at every length), ``log2(D)`` bits each.

    Deviations from MAD's generator (``generate_selective_copying_instance``): MAD fixes L
    (``num_tokens_to_copy``) and ``seq_len`` and fills the rest of the region with blanks inserted
    before random data tokens (so its region always ends on a data token); here L may vary, the
    noise is ``noise_per_token`` blanks per data token at uniformly random positions, and the
    special ids are 0 and 1 instead of V - 2 and V - 1. MAD scores the L slots after the copy
    token; here the copy token and the L - 1 slots after it (the same information, next-token
    aligned). The Mamba paper's version is the same task at length 4096 with 16 data tokens.

    Worked example, ``SelectiveCopyConfig(vocab_size=8, seq_len=12, min_len=3, max_len=3,
    noise_per_token=2).generate(1, seed=2)``:

        inputs     0  0  7  3  0  0  0  2  0  1  0  0       data 7 3 2 among blanks, then <copy>
        labels     .  .  .  .  .  .  .  .  .  7  3  2       '.' = -100 (not scored)
        prefix_len 9
    """

    name: Literal["selective_copy"] = "selective_copy"
    min_len: int = Field(default=4, ge=1)
    max_len: int = Field(default=16, ge=1)
    noise_per_token: int = Field(default=3, ge=1)
    length_unit: ClassVar[str] = "tokens"
    copy_token: ClassVar[int] = 1

    @property
    def filler_token(self) -> int:
        """The blank: noise, answer slots and padding."""
        return 0

    @model_validator(mode="after")
    def _check_sizes(self) -> SelectiveCopyConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"selective_copy needs min_len <= max_len; got {self.min_len} > {self.max_len}")
        if self.vocab_size < 4:
            raise ValueError(f"selective_copy needs vocab_size >= 4 (blank, copy and >= 2 data tokens); "
                             f"got {self.vocab_size}")
        need = self.seq_len_for(self.max_len)
        if self.seq_len < need:
            raise ValueError(f"selective_copy with max_len={self.max_len} and noise_per_token="
                             f"{self.noise_per_token} needs seq_len >= max_len*(noise_per_token+2) = {need}; "
                             f"got seq_len={self.seq_len}")
        return self

    def seq_len_for(self, length: int) -> int:
        return length * (self.noise_per_token + 2)

    def max_prefix_len(self) -> int:
        """The longest region: max_len (1 + noise_per_token)."""
        return self.max_len * (1 + self.noise_per_token)

    def bits_per_unit(self) -> float:
        return math.log2(self.vocab_size - 2)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """Generate ``num_examples`` sequences from a local generator seeded with ``seed``."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = np.random.default_rng(seed)
        inputs = np.zeros((num_examples, self.seq_len), dtype=np.int64)
        labels = np.full((num_examples, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        lengths = rng.integers(self.min_len, self.max_len + 1, size=num_examples)
        for i, L in enumerate(lengths.tolist()):
            R = L * (1 + self.noise_per_token)
            data = rng.integers(2, self.vocab_size, size=L)
            inputs[i, np.sort(rng.choice(R, L, replace=False))] = data
            inputs[i, R] = self.copy_token
            labels[i, R : R + L] = data
        return Batch(
            torch.from_numpy(inputs), torch.from_numpy(labels),
            torch.from_numpy(lengths * (1 + self.noise_per_token)), {"length": torch.from_numpy(lengths)},
        )
