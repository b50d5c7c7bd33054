"""The text-task contract: recall tasks rendered as prompts for pretrained language models.

A text task generates :class:`TextExample` s (a context, a question, an answer, slices) from a seed,
renders each as a prompt (:meth:`TextTaskConfig.prompt`, optionally read twice as in JRT-Prompt,
Arora et al. 2024, arXiv 2407.05483), and scores a greedy generation against the answer by exact
match (:meth:`TextTaskConfig.score`). Tokenising and generating happen elsewhere (an HF tokenizer
and model); this module is pure Python.

Worked example, ``PhonebookTextConfig(num_entries=3).generate(1, seed=0)[0]`` rendered by
``prompt(example)``; a model that answers " 434-3902" (then anything after a newline) scores 1:

    Victoria Mendez: 067-9215
    Zoe Munoz: 434-3902
    Noah Wright: 857-7766

    What is the phone number of Zoe Munoz?
    Answer:

and by ``prompt(example, read_twice=True)``, the context and question read twice before the cue:

    Victoria Mendez: 067-9215
    Zoe Munoz: 434-3902
    Noah Wright: 857-7766

    What is the phone number of Zoe Munoz?

    Victoria Mendez: 067-9215
    Zoe Munoz: 434-3902
    Noah Wright: 857-7766

    What is the phone number of Zoe Munoz?
    Answer:
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import ClassVar

from recallkit.base_config import StrictModel


MAX_PROMPT_ITEMS = 1_000_000
"""The most words, entries, pairs, chains or hops a text task's prompt may hold: about a million
tokens, beyond every model's context (a larger size hung, or was killed for memory, while its prompt
was built, before the context check could refuse it)."""


@dataclass(frozen=True)
class TextExample:
    """One prompt's worth of a text task.

    Attributes:
        context: the document / haystack the answer is recalled from.
        question: what is asked about it (one line).
        answer: the exact expected answer (no surrounding whitespace).
        slices: named attributes for sliced accuracy, e.g. ``{"depth": 0.25, "length": 512}``.
    """

    context: str
    question: str
    answer: str
    slices: dict[str, int | float | str] = field(default_factory=dict)


class TextTaskConfig(StrictModel):
    """Base of every text task's config; ``name`` is its key in ``TEXT_TASKS``.

    Subclasses set ``name`` (a literal), ``length_field`` (the field that is the length axis) and
    ``length_unit``, and implement ``sample(rng)`` (the examples of one drawn context, usually one)
    and ``read_answer(prompt)`` (the answer read back from a rendered prompt: the oracle).
    ``instruction``, when set, opens every prompt once (the benchmark's task instruction).
    """

    name: str
    length_field: ClassVar[str]
    length_unit: ClassVar[str]
    instruction: ClassVar[str] = ""
    answer_cue: ClassVar[str] = "Answer:"

    @property
    def length(self) -> int:
        """The task's position on its length axis, in ``length_unit`` s (entries, pairs, words)."""
        return getattr(self, self.length_field)

    def at_length(self, length: int) -> TextTaskConfig:
        """The same task at ``length`` (validated: an impossible length is a ValueError)."""
        return type(self).model_validate(self.model_dump() | {self.length_field: length})

    @property
    def setting(self) -> str:
        """The report panel of this task, e.g. ``phonebook_text N=64``: one per configuration, so
        read-twice runs (a rendering, not a config) share their task's panel."""
        return f"{self.name} {self.length_unit}={self.length}"

    def generate(self, num_examples: int, seed: int) -> list[TextExample]:
        """``num_examples`` examples from a local ``random.Random(seed)``: the same seed gives the same
        examples, and the global ``random`` state is never touched."""
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        rng = random.Random(seed)
        examples: list[TextExample] = []
        while len(examples) < num_examples:
            examples += self.sample(rng)
        return examples[:num_examples]

    def sample(self, rng: random.Random) -> list[TextExample]:  # pragma: no cover - abstract
        """The examples of one freshly drawn context (several when the task asks several questions)."""
        raise NotImplementedError

    def prompt(self, example: TextExample, read_twice: bool = False) -> str:
        """The text given to the model: [instruction, blank line,] context, blank line, question, newline,
        answer cue. ``read_twice`` (JRT-Prompt) reads the context and question twice before the cue:
        context, question, context, question, cue, so a fixed-state model sees the question before its
        second pass over the context and can keep what it needs. A variant: the JRT paper's reference
        prompts (HazyResearch/prefix-linear-attention, the ``*Twice`` tasks) repeat the context only,
        context, context, question; here the question also comes before the second reading."""
        reading = [example.context, example.question] * (2 if read_twice else 1)
        head = [self.instruction] if self.instruction else []
        return "\n\n".join([*head, *reading]) + "\n" + self.answer_cue

    def score(self, generated: str, answer: str) -> bool:
        """Exact match of the generation's first line: leading and trailing whitespace of the whole
        generation is stripped (a model usually answers ``" 917-5530\\n..."``), then its first line,
        itself stripped, must equal ``answer`` exactly. ``"917-5530."`` or ``"It is 917-5530"`` are
        wrong: the protocol rewards answering in the format of the context."""
        lines = generated.strip().splitlines()
        return bool(lines) and lines[0].strip() == answer

    def oracle(self, example: TextExample, read_twice: bool = False) -> str:
        """The answer read from the rendered prompt alone (never ``example.answer``): a check that every
        prompt holds its answer, unambiguously; scoring the oracle gives accuracy 1.0."""
        return self.read_answer(self.prompt(example, read_twice))

    def read_answer(self, prompt: str) -> str:  # pragma: no cover - abstract
        """Parse the question and the context out of ``prompt`` and look the answer up."""
        raise NotImplementedError


def find(pattern: str, text: str, last: bool = False) -> re.Match[str]:
    """The first (or, with ``last``, the final) match of ``pattern`` in ``text``, lines anchored
    (``re.MULTILINE``); a ValueError when there is none: the oracle cannot read the prompt."""
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    if not matches:
        raise ValueError(f"the prompt has no match for {pattern!r}")
    return matches[-1 if last else 0]
