"""Key-value retrieval over a JSON object ("Lost in the Middle", Liu et al. 2023, arXiv 2307.03172)."""

from __future__ import annotations

import json
import random
from typing import ClassVar, Literal, NamedTuple

from pydantic import Field, model_validator

from recallkit.text_tasks.base import MAX_PROMPT_ITEMS, TextExample, TextTaskConfig, find
from recallkit.text_tasks.draws import depth_bucket, distinct_ints, relative_position


class Pairs(NamedTuple):
    """Drawn key-value pairs: pair i is ``keys[i]: values[i]``, all 2n ids distinct (a value is never
    also a key); ``query`` is the pair asked about."""

    keys: list[int]
    values: list[int]
    query: int


def draw_pairs(rng: random.Random, num_pairs: int, id_space: int) -> Pairs:
    """``num_pairs`` pairs of distinct ids below ``id_space`` and the index of the queried pair."""
    ids = distinct_ints(rng, id_space, 2 * num_pairs)
    return Pairs(ids[:num_pairs], ids[num_pairs:], rng.randrange(num_pairs))


def hex_id(value: int, digits: int) -> str:
    """``value`` as ``digits`` lowercase hex digits, grouped 8-4-4-4-12 like a UUID when there are 32."""
    text = f"{value:0{digits}x}"
    if digits != 32:
        return text
    return "-".join(text[a:b] for a, b in ((0, 8), (8, 12), (12, 16), (16, 20), (20, 32)))


class KVRetrievalTextConfig(TextTaskConfig):
    """Find the value of one key in a JSON object of ``num_pairs`` random key-value pairs.

    As Liu et al.'s synthetic task: keys and values are random ids, all distinct, written one pair a
    line as ``{"key": "value",\\n "key": "value"}`` (valid JSON) after their instruction. Their ids are
    UUIDs (``id_hex_digits=32``, grouped 8-4-4-4-12, about 25 BPE tokens each); fewer hex digits
    (e.g. 8) save tokens per pair at the same number of pairs. The ids are UUID-like only: random hex,
    no version nibble. The question names the key; the answer is the bare value (no quotes).
    Slices: ``depth`` = the quarter of the object the queried pair is in, ``length`` = ``num_pairs``.

    Worked example, ``KVRetrievalTextConfig(num_pairs=3, id_hex_digits=8).generate(1, seed=0)[0]``
    rendered by ``prompt``:

        Extract the value corresponding to the specified key in the JSON object below.

        {"d82c07cd": "7a024204",
         "6baa9455": "e87a1613",
         "82e2e662": "81332876"}

        What is the value of the key "6baa9455"?
        Answer:

    answer: e87a1613, slices: {'depth': 0.5, 'length': 3}
    """

    name: Literal["kv_retrieval_text"] = "kv_retrieval_text"
    num_pairs: int = Field(default=64, ge=1, le=MAX_PROMPT_ITEMS)
    id_hex_digits: int = Field(default=32, ge=4, le=32)
    length_field: ClassVar[str] = "num_pairs"
    length_unit: ClassVar[str] = "pairs"
    instruction: ClassVar[str] = ("Extract the value corresponding to the specified key in the JSON object "
                                  "below.")

    @model_validator(mode="after")
    def _check_sizes(self) -> KVRetrievalTextConfig:
        if 2 * self.num_pairs > 16**self.id_hex_digits:
            digits = self.id_hex_digits
            raise ValueError(f"kv_retrieval_text has {16**digits} distinct {digits}-hex ids for "
                             f"2 * num_pairs = {2 * self.num_pairs} keys and values")
        return self

    @property
    def setting(self) -> str:
        return f"{self.name} pairs={self.num_pairs} id={self.id_hex_digits}hex"

    def sample(self, rng: random.Random) -> list[TextExample]:
        pairs = draw_pairs(rng, self.num_pairs, 16**self.id_hex_digits)
        keys = [hex_id(k, self.id_hex_digits) for k in pairs.keys]
        values = [hex_id(v, self.id_hex_digits) for v in pairs.values]
        context = "{" + ",\n ".join(f'"{k}": "{v}"' for k, v in zip(keys, values)) + "}"
        depth = depth_bucket(relative_position(pairs.query, self.num_pairs))
        question = f'What is the value of the key "{keys[pairs.query]}"?'
        slices = {"depth": depth, "length": self.num_pairs}
        return [TextExample(context, question, values[pairs.query], slices)]

    def read_answer(self, prompt: str) -> str:
        key = find(r'^What is the value of the key "([0-9a-f-]+)"\?$', prompt, last=True).group(1)
        record = json.loads(find(r"\{[^{}]*\}", prompt).group(0))  # ids are hex: no brace inside
        return record[key]
