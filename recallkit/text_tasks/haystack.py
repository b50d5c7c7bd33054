"""Filler text for the needle tasks (RULER, Hsieh et al. 2024, arXiv 2404.06654) and where needles go.

Two kinds of haystack, both made offline:

- ``noise``: RULER's repeated noise, the five sentences "The grass is green. The sky is blue. The sun is
  yellow. Here we go. There and back again." cycled (it needs no randomness: a model that compresses
  the repetition keeps its state for the needles);
- ``words``: sentences "The <adjective> <noun> <verb> the <adjective> <noun>." drawn from the shipped
  word lists, so the filler is as varied as the needles and cannot be compressed away.

A haystack is a list of sentences; needles are inserted into the gaps between them (gap ``g`` is
before sentence ``g``, gap ``len(sentences)`` after the last), and the text is the sentences joined by
single spaces.
"""

from __future__ import annotations

import random
from typing import Literal

from recallkit.text_tasks.words import ADJECTIVES, NOUNS, VERBS

Haystack = Literal["noise", "words"]

NOISE: tuple[str, ...] = (
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.",
)


def word_sentence(rng: random.Random) -> str:
    """A random filler sentence of seven words, e.g. ``"The quiet lantern watched the red tiger."``."""
    return (f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} "
            f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}.")


def filler(rng: random.Random, num_words: int, kind: Haystack) -> list[str]:
    """Sentences of the ``kind`` haystack until they hold at least ``num_words`` words (at least one)."""
    sentences: list[str] = []
    words = 0
    while words < num_words or not sentences:
        sentence = NOISE[len(sentences) % len(NOISE)] if kind == "noise" else word_sentence(rng)
        sentences.append(sentence)
        words += len(sentence.split())
    return sentences


def insert(sentences: list[str], items: list[tuple[int, str]]) -> list[str]:
    """``sentences`` with each ``(gap, text)`` of ``items`` placed at its gap; items sharing a gap keep
    their order in ``items`` (so a chain listed in order stays in order)."""
    at_gap: dict[int, list[str]] = {}
    for gap, text in items:
        if not 0 <= gap <= len(sentences):
            raise ValueError(f"gap {gap} is outside 0..{len(sentences)}")
        at_gap.setdefault(gap, []).append(text)
    merged: list[str] = []
    for gap in range(len(sentences) + 1):
        merged += at_gap.get(gap, [])
        merged += sentences[gap : gap + 1]
    return merged
