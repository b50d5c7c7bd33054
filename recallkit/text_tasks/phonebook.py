"""Text phone book (Repeat After Me, Jelassi et al. 2024, arXiv 2402.01032): a person's number from a book."""

from __future__ import annotations

import random
import re
from typing import ClassVar, Literal, NamedTuple

from pydantic import Field, model_validator

from recallkit.text_tasks.base import MAX_PROMPT_ITEMS, TextExample, TextTaskConfig, find
from recallkit.text_tasks.draws import depth_bucket, distinct_ints, relative_position
from recallkit.text_tasks.names import NUM_FULL_NAMES, full_name

NUMBERS = 10**7
"""Seven-digit phone numbers, written ``ddd-dddd``."""


class Book(NamedTuple):
    """A drawn phone book: entry i is name id ``names[i]`` with number ``numbers[i]`` (both distinct);
    ``queries`` are the distinct entries asked about. The structure a token-level book can share."""

    names: list[int]
    numbers: list[int]
    queries: list[int]


def draw_book(rng: random.Random, num_entries: int, num_queries: int, num_names: int) -> Book:
    """A book of ``num_entries`` distinct names (ids below ``num_names``) and distinct numbers, and
    ``num_queries`` distinct entries to ask about."""
    names = distinct_ints(rng, num_names, num_entries)
    numbers = distinct_ints(rng, NUMBERS, num_entries)
    return Book(names, numbers, rng.sample(range(num_entries), num_queries))


def phone_number(number: int) -> str:
    """``ddd-dddd``, e.g. ``phone_number(3820142) == "382-0142"``."""
    digits = f"{number:07d}"
    return f"{digits[:3]}-{digits[3:]}"


class PhonebookTextConfig(TextTaskConfig):
    """Look up a person's phone number in a book of ``num_entries`` lines ``First Last: ddd-dddd``.

    Names are distinct full names (first name x surname from ``names.py``, 50,172 of them), numbers
    distinct random seven-digit numbers. Each book is asked ``num_queries`` questions about distinct
    entries, one example each (they share the context, so a prefix cache can serve them together).
    Slices: ``depth`` = the quarter of the book the queried entry is in (entry i of N sits at
    i / (N - 1)), ``length`` = ``num_entries``.

    Worked example, ``PhonebookTextConfig(num_entries=3).generate(1, seed=0)[0]`` rendered by
    ``prompt``:

        Victoria Mendez: 067-9215
        Zoe Munoz: 434-3902
        Noah Wright: 857-7766

        What is the phone number of Zoe Munoz?
        Answer:

    answer: 434-3902, slices: {'depth': 0.5, 'length': 3}
    """

    name: Literal["phonebook_text"] = "phonebook_text"
    num_entries: int = Field(default=64, ge=1, le=MAX_PROMPT_ITEMS)
    num_queries: int = Field(default=1, ge=1)
    length_field: ClassVar[str] = "num_entries"
    length_unit: ClassVar[str] = "entries"

    @model_validator(mode="after")
    def _check_sizes(self) -> PhonebookTextConfig:
        if self.num_entries > NUM_FULL_NAMES:
            raise ValueError(f"phonebook_text has {NUM_FULL_NAMES} distinct names; "
                             f"got num_entries={self.num_entries}")
        if self.num_queries > self.num_entries:
            raise ValueError(f"phonebook_text asks distinct entries: num_queries={self.num_queries} > "
                             f"num_entries={self.num_entries}")
        return self

    @property
    def setting(self) -> str:
        return f"{self.name} N={self.num_entries}"

    def sample(self, rng: random.Random) -> list[TextExample]:
        book = draw_book(rng, self.num_entries, self.num_queries, NUM_FULL_NAMES)
        names = [full_name(i) for i in book.names]
        context = "\n".join(f"{name}: {phone_number(number)}" for name, number in zip(names, book.numbers))
        examples = []
        for q in book.queries:
            depth = depth_bucket(relative_position(q, self.num_entries))
            slices = {"depth": depth, "length": self.num_entries}
            question = f"What is the phone number of {names[q]}?"
            examples.append(TextExample(context, question, phone_number(book.numbers[q]), slices))
        return examples

    def read_answer(self, prompt: str) -> str:
        name = find(r"^What is the phone number of (.+)\?$", prompt, last=True).group(1)
        return find(rf"^{re.escape(name)}: (\d{{3}}-\d{{4}})$", prompt).group(1)
