"""Variable tracking, multi-hop tracing in a haystack (RULER's vt, Hsieh et al. 2024, arXiv 2404.06654)."""

from __future__ import annotations

import itertools
import random
import re
import string
from typing import ClassVar, Literal, NamedTuple

from pydantic import Field, model_validator

from recallkit.text_tasks.base import MAX_PROMPT_ITEMS, TextExample, TextTaskConfig, find
from recallkit.text_tasks.draws import distinct_ints
from recallkit.text_tasks.haystack import Haystack, filler, insert

NAME_LETTERS = 5
"""Variable names are five capital letters, as RULER's."""
NUM_NAMES = 26**NAME_LETTERS
MAX_VALUES = 9 * 10**4
"""Values are distinct five-digit numbers, one per chain."""


class Chains(NamedTuple):
    """Drawn assignment chains: chain c assigns ``values[c]`` (distinct five-digit numbers) to
    ``names[c][0]``, then each next name the previous one; statement h of chain c goes into haystack
    gap ``gaps[c][h]`` (non-decreasing, so the chain reads in order). Chain 0 is queried."""

    names: list[list[str]]
    values: list[int]
    gaps: list[list[int]]


def variable_name(index: int) -> str:
    """The ``index``-th five-letter name in base 26, e.g. ``variable_name(0) == "AAAAA"``."""
    letters = [string.ascii_uppercase[index // 26**i % 26] for i in range(NAME_LETTERS)]
    return "".join(reversed(letters))


def draw_chains(rng: random.Random, num_chains: int, num_hops: int, num_gaps: int) -> Chains:
    """``num_chains`` chains of ``num_hops + 1`` variables with distinct names and values, each chain's
    statements in sorted random gaps of a haystack with ``num_gaps`` gaps (chains interleave)."""
    ids = distinct_ints(rng, NUM_NAMES, num_chains * (num_hops + 1))
    size = num_hops + 1
    names = [[variable_name(i) for i in ids[c * size : (c + 1) * size]] for c in range(num_chains)]
    values = [10**4 + v for v in distinct_ints(rng, MAX_VALUES, num_chains)]
    gaps = [sorted(rng.randrange(num_gaps) for _ in range(num_hops + 1)) for _ in range(num_chains)]
    return Chains(names, values, gaps)


def statements(names: list[str], value: int) -> list[str]:
    """One chain's sentences: ``VAR A = 12345.``, ``VAR B = VAR A.``, ..."""
    return [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]


class VariableTrackingTextConfig(TextTaskConfig):
    """Follow a chain of ``num_hops`` variable assignments through a haystack to the number it carries.

    RULER's vt: a chain ``VAR A = 12345``, ``VAR B = VAR A``, ... of ``num_hops + 1`` variables (five
    capital letters, distinct) is spread in order over a haystack of about ``context_words`` filler
    words (``haystack``: RULER's ``noise`` or random ``words`` sentences), together with
    ``num_chains - 1`` distractor chains carrying other numbers, interleaved with it. Deviation from
    RULER, which asks for every variable assigned the number (scored by substring match of each): we
    ask for the value of the chain's last variable, one answer scored by exact match, which needs the
    same ``num_hops`` hops backwards through the text. Slices: ``hops`` = ``num_hops``, ``length`` =
    ``context_words``, ``chains`` = ``num_chains``.

    Worked example, ``VariableTrackingTextConfig(context_words=8, num_hops=2).generate(1, seed=0)[0]``
    rendered by ``prompt``:

        Memorize and track the chain(s) of variable assignment hidden in the following text.

        The grass is green. VAR ODTED = 43936. VAR PLLXK = VAR ODTED. The sky is blue. VAR BMQTR = VAR PLLXK.

        What is the value of variable BMQTR?
        Answer:

    answer: 43936, slices: {'hops': 2, 'length': 8, 'chains': 1}
    """

    name: Literal["variable_tracking_text"] = "variable_tracking_text"
    context_words: int = Field(default=500, ge=1, le=MAX_PROMPT_ITEMS)
    num_hops: int = Field(default=4, ge=1, le=MAX_PROMPT_ITEMS)
    num_chains: int = Field(default=1, ge=1, le=MAX_VALUES)
    haystack: Haystack = "noise"
    length_field: ClassVar[str] = "context_words"
    length_unit: ClassVar[str] = "words"
    instruction: ClassVar[str] = ("Memorize and track the chain(s) of variable assignment hidden in the "
                                  "following text.")

    @model_validator(mode="after")
    def _check_sizes(self) -> VariableTrackingTextConfig:
        if self.num_chains * (self.num_hops + 1) > NUM_NAMES:
            variables = self.num_chains * (self.num_hops + 1)
            raise ValueError(f"variable_tracking_text has {NUM_NAMES} distinct variable names for "
                             f"num_chains * (num_hops + 1) = {variables} variables")
        return self

    @property
    def setting(self) -> str:
        return (f"{self.name} words={self.context_words} hops={self.num_hops} chains={self.num_chains} "
                f"haystack={self.haystack}")

    def sample(self, rng: random.Random) -> list[TextExample]:
        sentences = filler(rng, self.context_words, self.haystack)
        chains = draw_chains(rng, self.num_chains, self.num_hops, len(sentences) + 1)
        # listed chain by chain in order: insert() keeps that order among statements sharing a gap
        items = [(gap, text) for names, value, gaps in zip(*chains)
                 for gap, text in zip(gaps, statements(names, value))]
        context = " ".join(insert(sentences, items))
        slices = {"hops": self.num_hops, "length": self.context_words, "chains": self.num_chains}
        last = chains.names[0][-1]
        return [TextExample(context, f"What is the value of variable {last}?", str(chains.values[0]), slices)]

    def read_answer(self, prompt: str) -> str:
        name = find(r"^What is the value of variable ([A-Z]+)\?$", prompt, last=True).group(1)
        for _ in range(prompt.count("VAR ") + 1):  # a hop reads a statement: a chain has no more hops
            value = find(rf"VAR {re.escape(name)} = (VAR [A-Z]+|\d+)\.", prompt).group(1)
            if not value.startswith("VAR "):
                return value
            name = value.removeprefix("VAR ")
        raise ValueError(f"variable {name} never reaches a number")
