"""Token-level tasks on a pretrained model: a task's integer vocabulary mapped onto real words.

recallkit's tasks draw tokens from ``range(vocab_size)``. To run one on a pretrained model, each task
id is mapped to a fixed, seeded choice of the tokenizer's ordinary single-token words (a space and
3-12 ASCII letters, e.g. `` river``), so a key-value pair reads as a pair of words; inputs and labels
are mapped alike, and the model's argmax over its whole vocabulary is scored as usual
(``rk.evaluate`` works unchanged).
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from recallkit.errors import RecallkitError
from recallkit.tasks.base import IGNORE_INDEX, Batch

_WORD = re.compile(r"^ [A-Za-z]{3,12}$")
_SENTENCEPIECE_WORD = re.compile(r"^\u2581[A-Za-z]{3,12}$")  # "▁river": a word that starts with a space


def ordinary_words(tokenizer: Any) -> list[int]:
    """Ids of the tokens that decode to a space and one 3-12 letter word, sorted. A SentencePiece
    tokenizer (Llama-2, Mistral) drops the space of a token decoded alone, so its ``▁word`` pieces
    are read as they are stored."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        if _WORD.match(tokenizer.decode([token_id])) or _SENTENCEPIECE_WORD.match(
                str(tokenizer.convert_ids_to_tokens(token_id))):
            ids.append(token_id)
    return ids


def token_map(tokenizer: Any, vocab_size: int, seed: int = 0) -> Tensor:
    """(vocab_size,) tokenizer ids: task token i is word ``map[i]``; distinct words drawn with ``seed``
    from the sorted ordinary words, in the order drawn (not sorted)."""
    words = ordinary_words(tokenizer)
    if vocab_size > len(words):
        raise RecallkitError(f"the tokenizer has {len(words)} ordinary single-token words, fewer than the "
                             f"task's vocab_size={vocab_size}; use a smaller task vocabulary")
    chosen = random.Random(seed).sample(words, vocab_size)
    return torch.tensor(chosen, dtype=torch.long)


def map_batch(batch: Batch, mapping: Tensor) -> Batch:
    """The batch with every input and label id replaced by ``mapping[id]`` (ignored labels kept)."""
    labels = torch.where(batch.labels == IGNORE_INDEX, batch.labels, mapping[batch.labels.clamp(min=0)])
    return replace(batch, inputs=mapping[batch.inputs], labels=labels)
