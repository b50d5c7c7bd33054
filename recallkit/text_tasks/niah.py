"""Needle in a haystack among near-identical needles (RULER's niah_multikey, Hsieh et al. 2024, arXiv
2404.06654)."""

from __future__ import annotations

import random
import re
from typing import ClassVar, Literal, NamedTuple

from pydantic import Field, model_validator

from recallkit.text_tasks.base import MAX_PROMPT_ITEMS, TextExample, TextTaskConfig, find
from recallkit.text_tasks.draws import depth_bucket, distinct_ints
from recallkit.text_tasks.haystack import Haystack, filler, insert
from recallkit.text_tasks.words import ADJECTIVES, NOUNS

MAX_DISTRACTORS = len(ADJECTIVES) + len(NOUNS) - 2
"""Distractor keys share the adjective or the noun of the queried key: this many are distinct."""


class Needles(NamedTuple):
    """Drawn needles: ``keys[0]`` is queried, the rest are distractors; ``values`` are distinct
    seven-digit numbers; needle i goes into haystack gap ``gaps[i]``."""

    keys: list[str]
    values: list[int]
    gaps: list[int]


def near_keys(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct ``adjective-noun`` keys; the first is the queried one and every other shares
    one word with it (half its adjective, the rest its noun, as far as the word lists allow), so only the
    whole key tells them apart."""
    adjective, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
    num_nouns = min(len(NOUNS) - 1, max(count // 2, count - len(ADJECTIVES)))
    other_nouns = rng.sample([n for n in NOUNS if n != noun], num_nouns)
    other_adjectives = rng.sample([a for a in ADJECTIVES if a != adjective], count - 1 - num_nouns)
    distractors = [f"{adjective}-{n}" for n in other_nouns] + [f"{a}-{noun}" for a in other_adjectives]
    rng.shuffle(distractors)
    return [f"{adjective}-{noun}", *distractors]


def draw_needles(rng: random.Random, num_distractors: int, num_gaps: int, depth: float | None) -> Needles:
    """The needles of one haystack with ``num_gaps`` gaps: the queried needle in the gap nearest ``depth``
    (a uniformly random gap when None), each distractor in a uniformly random gap."""
    keys = near_keys(rng, num_distractors + 1)
    values = [10**6 + v for v in distinct_ints(rng, 9 * 10**6, num_distractors + 1)]
    target = rng.randrange(num_gaps) if depth is None else round(depth * (num_gaps - 1))
    return Needles(keys, values, [target] + [rng.randrange(num_gaps) for _ in range(num_distractors)])


def needle(key: str, value: int) -> str:
    """RULER's needle sentence."""
    return f"One of the special magic numbers for {key} is: {value}."


class NiahTextConfig(TextTaskConfig):
    """Recall the special magic number of one key from a haystack that also holds near-identical keys.

    RULER's niah_multikey: a haystack of about ``context_words`` filler words (``haystack``: RULER's
    repeated ``noise`` sentences or random ``words`` sentences, see ``haystack.py``) holds the needle
    "One of the special magic numbers for {key} is: {value}." and ``num_distractors`` more needles
    with other keys and values. Keys are ``adjective-noun`` words as RULER's; unlike RULER's random
    keys, every distractor shares a word with the queried key (near-identical keys make the recall
    harder than matching one word). Values are distinct seven-digit numbers. The queried needle goes
    into the gap between sentences nearest ``depth`` (0 = before the first sentence, 1 = after the
    last; None draws it uniformly per example), distractors into uniform gaps; needles add words on
    top of ``context_words``. Slices: ``depth`` = the quarter of the haystack the needle is in,
    ``length`` = ``context_words``, ``distractors`` = ``num_distractors``.

    Worked example, ``NiahTextConfig(context_words=16, num_distractors=1, depth=0.5).generate(1,
    seed=0)[0]`` rendered by ``prompt`` (long lines wrapped here, continuations indented):

        Some special magic numbers are hidden within the following text. Make sure to memorize them.

        The grass is green. The sky is blue. One of the special magic numbers for rare-sailor is: 5343902.
            The sun is yellow. One of the special magic numbers for rare-bicycle is: 9577766. Here we go.
            There and back again.

        What is the special magic number for rare-sailor mentioned in the provided text?
        Answer:

    answer: 5343902, slices: {'depth': 0.5, 'length': 16, 'distractors': 1}
    """

    name: Literal["niah_text"] = "niah_text"
    context_words: int = Field(default=500, ge=1, le=MAX_PROMPT_ITEMS)
    depth: float | None = Field(default=None, ge=0, le=1)
    num_distractors: int = Field(default=3, ge=0)
    haystack: Haystack = "noise"
    length_field: ClassVar[str] = "context_words"
    length_unit: ClassVar[str] = "words"
    instruction: ClassVar[str] = ("Some special magic numbers are hidden within the following text. "
                                  "Make sure to memorize them.")

    @model_validator(mode="after")
    def _check_sizes(self) -> NiahTextConfig:
        if self.num_distractors > MAX_DISTRACTORS:
            raise ValueError(f"niah_text has {MAX_DISTRACTORS} distinct distractor keys near a key; got "
                             f"num_distractors={self.num_distractors}")
        return self

    @property
    def setting(self) -> str:
        depth = "uniform" if self.depth is None else self.depth
        return (f"{self.name} words={self.context_words} distractors={self.num_distractors} depth={depth} "
                f"haystack={self.haystack}")

    def sample(self, rng: random.Random) -> list[TextExample]:
        sentences = filler(rng, self.context_words, self.haystack)
        needles = draw_needles(rng, self.num_distractors, len(sentences) + 1, self.depth)
        items = [(gap, needle(k, v)) for gap, k, v in zip(needles.gaps, needles.keys, needles.values)]
        rng.shuffle(items)  # needles sharing a gap land in random order, not the queried one first
        context = " ".join(insert(sentences, items))
        key = needles.keys[0]
        slices = {"depth": depth_bucket(needles.gaps[0] / len(sentences)), "length": self.context_words,
                  "distractors": self.num_distractors}
        question = f"What is the special magic number for {key} mentioned in the provided text?"
        return [TextExample(context, question, str(needles.values[0]), slices)]

    def read_answer(self, prompt: str) -> str:
        key = find(r"^What is the special magic number for (\S+) mentioned in the provided text\?$", prompt,
                   last=True).group(1)
        return find(rf"One of the special magic numbers for {re.escape(key)} is: (\d+)\.", prompt).group(1)
