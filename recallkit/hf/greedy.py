"""Greedy answers of a pretrained model, and their exact-match score from teacher-forced passes.

:func:`generate` feeds argmax tokens back one at a time through the model's cache until every
sequence has ended its first non-blank line or emitted an end-of-sequence token.

:func:`greedy_match` scores the same greedy answer against the expected one without generating it
token by token: it reads the expected answer's tokens as a block (teacher forcing) and compares
the argmax at each position with the next expected token (the block's first ``PROBE`` tokens first:
a sequence that already disagrees skips the rest). Greedy decoding writes the expected
tokens exactly as long as those argmaxes agree, so the first disagreement (or the token after the
whole answer) is the first greedy token that differs, known from the same pass. From that text the
score is decided whenever it is already settled: the line has ended, or the text can no longer
become the answer. When it is not (the model opens with a blank line, or spells the answer with
other tokens), the greedy tokens known so far plus the rest of the answer are read as the next
block, up to ``ROUNDS`` times, and only then is the answer generated token by token from a fresh
copy of the state. Either way the score equals scoring :func:`generate`'s text (tested on every
example of a run).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from recallkit.hf.adapter import HFModel, HFState
from recallkit.hf.prompt_read import select_rows
from recallkit.text_tasks.base import TextTaskConfig


@torch.no_grad()
def generate(model: HFModel, logits: Tensor, state: HFState, max_new_tokens: int) -> list[str]:
    """Greedy continuations (one text per sequence) from the next-token ``logits`` (B, V) after the
    prompt and the ``state`` after it (continued in place), at most ``max_new_tokens`` tokens."""
    stop = StopRule(model, logits.shape[0])
    token = logits.argmax(-1)
    while not stop.update(token) and len(stop.tokens[0]) < max_new_tokens:
        logits, state = model.step(token, state)
        token = logits.argmax(-1)
    return [model.tokenizer.decode(row, skip_special_tokens=True) for row in stop.answers()]


ROUNDS = 4
"""Teacher-forced blocks tried per answer before generating it token by token."""


@torch.no_grad()
def greedy_match(model: HFModel, logits: Tensor, fresh_state: Callable[[], HFState], answer: str,
                 score: Callable[[str, str], bool], max_new_tokens: int, *,
                 expected: list[int] | None = None, greedy: list[int] | None = None) -> tuple[bool, str]:
    """Whether the greedy answer of one sequence (``logits`` (1, V) after its prompt) scores against
    ``answer``, and the greedy text as far as it was needed to decide. ``fresh_state()`` returns a
    new state after the prompt each time it is called (one per block, one more if the text must be
    generated after all). ``expected`` and ``greedy`` continue from a block already read (the
    tokens it read and its argmaxes)."""
    expected = answer_ids(model, answer) if expected is None else expected
    for _ in range(ROUNDS):
        if len(expected) + 1 > max_new_tokens:  # generation would stop before the block's end
            break
        if greedy is None:
            greedy = teacher_forced_argmax(model, logits, fresh_state(), expected)[0]
        known, outcome = decide(model, greedy, expected, answer, score)
        if outcome is not None:
            return outcome
        expected, greedy = known + rest_of_answer(model, known, answer), None
    text = generate(model, logits, fresh_state(), max_new_tokens)[0]
    return score(text, answer), text


def rest_of_answer(model: HFModel, known: list[int], answer: str) -> list[int]:
    """The tokens of what the answer still lacks after the greedy tokens ``known`` (the next block
    reads ``known`` and these); none when the text already holds the whole answer."""
    content = model.tokenizer.decode(known, skip_special_tokens=True).lstrip()
    rest = answer[len(content):] if answer.startswith(content) else ""
    return _continuation(model, f"{ANSWER_CUE} {content}", rest) if rest else []


ANSWER_CUE = TextTaskConfig.answer_cue
"""What a text task's prompt ends with (``Answer:``): the answer follows it after a space."""


def answer_ids(model: HFModel, answer: str, cue: str = ANSWER_CUE) -> list[int]:
    """The answer's tokens as the model would write it after the ``cue`` (a leading space)."""
    return _continuation(model, cue, " " + answer)


def _continuation(model: HFModel, context: str, text: str) -> list[int]:
    """The tokens ``text`` adds after ``context`` when the two are tokenised together. A SentencePiece
    tokenizer (Llama-2's) marks the start of a text with a space of its own, so " 42" alone is
    ``▁▁ 4 2`` where the model writes ``▁ 4 2`` after the cue: every greedy match would then fail
    on its first token and generate the answer token by token. Where the context's tokens are not a
    prefix of the whole's (a merge across the boundary, as byte-level BPE's `` 42`` after ``Answer: 4``),
    ``text`` is tokenised alone."""
    def ids(string: str) -> list[int]:
        return model.tokenizer(string, add_special_tokens=False).input_ids

    head, whole = ids(context), ids(context + text)
    return whole[len(head):] if whole[:len(head)] == head and len(whole) > len(head) else ids(text)


PROBE = 3
"""Answer tokens every row of a block reads; only the rows whose argmaxes still agree read the rest.
Under a small budget most answers go wrong within them, and a forward pass of SmolLM2-135M costs
about as much as 25 extra token rows (80 ms + 3.2 ms per row, measured on 2 cores)."""


@torch.no_grad()
def teacher_forced_argmax(model: HFModel, logits: Tensor, state: HFState, expected: list[int], *,
                          probe: int = PROBE) -> list[list[int]]:
    """Per sequence, the argmax after the prompt (``logits`` (B, V)) and after each of the ``expected``
    tokens read from ``state`` (continued in place), up to the first that differs from the next
    expected token: B lists of at most n + 1 tokens (n + 1 when all agree, so the list holds the
    token after the answer). The first ``probe`` tokens are read by every sequence, the rest by the
    sequences whose argmaxes have agreed so far (a stacked state, :func:`stack_states`, is cut to
    them)."""
    greedy = logits.argmax(-1)[:, None].tolist()
    rows = list(range(len(greedy)))  # the sequences the state holds, in its order
    start = 0
    for stop in sorted({min(probe, len(expected)), len(expected)}):
        if stop <= start:
            break
        # greedy[row] holds argmaxes 0 .. start of a row that agreed so far; argmax i follows expected[:i]
        agreeing = [n for n, row in enumerate(rows)
                    if len(greedy[row]) == start + 1 and greedy[row][-1] == expected[start]]
        if not agreeing:
            break
        if len(agreeing) < len(rows):
            state = select_rows(state, agreeing)
            rows = [rows[n] for n in agreeing]
        block = torch.tensor([expected[start:stop]], device=logits.device).expand(len(rows), -1)
        block_logits, state = model.prefill(block, state=state)
        for row, tokens in zip(rows, block_logits.argmax(-1).tolist(), strict=True):
            for i, token in enumerate(tokens, start + 1):
                greedy[row].append(token)
                if i < len(expected) and token != expected[i]:
                    break
        start = stop
    return greedy


def decide(model: HFModel, greedy: list[int], expected: list[int], answer: str,
           score: Callable[[str, str], bool]) -> tuple[list[int], tuple[bool, str] | None]:
    """The greedy tokens that the teacher-forced argmaxes ``greedy`` (n + 1) after ``expected`` (n)
    reveal, and the score and text of the greedy answer, or None when they do not settle it."""
    first = next((i for i, (g, e) in enumerate(zip(greedy, expected)) if g != e), len(expected))
    tokens = expected[:first] + [greedy[first]]  # greedy's first tokens, up to the first new one
    ended = tokens[-1] in eos_ids(model)
    text = model.tokenizer.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True)
    if ended or line_ended(text) or not could_become(text, answer):
        return tokens, (score(text, answer), text)
    return tokens, None


def line_ended(text: str) -> bool:
    """Whether the generation has completed its first non-blank line (the stop rule)."""
    return "\n" in text.lstrip()


def could_become(text: str, answer: str) -> bool:
    """Whether more tokens after ``text`` (whose first line is still open) can still make the line,
    stripped, equal ``answer``: its content so far is the start of the answer, or the answer followed
    only by blanks. Undecodable bytes (a split character) keep it open."""
    content = text.lstrip()
    return "\ufffd" in text or answer.startswith(content) or (
        content.startswith(answer) and not content[len(answer):].strip())


class StopRule:
    """Tracks generated tokens per sequence and when each one ended: at an end-of-sequence token, or at
    the token that completes the first non-blank line (the scorer strips leading blank lines, so a
    model that opens with a newline is still answering)."""

    def __init__(self, model: HFModel, batch_size: int) -> None:
        self.tokenizer = model.tokenizer
        self.eos = eos_ids(model)
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.ended: list[int | None] = [None] * batch_size  # index of the stopping token

    def update(self, token: Tensor) -> bool:
        """Record one new token per sequence; True when every sequence has ended."""
        for row, t in enumerate(token.tolist()):
            self.tokens[row].append(t)
            if self.ended[row] is None and (t in self.eos or self._line_ended(row)):
                self.ended[row] = len(self.tokens[row]) - 1
        return all(end is not None for end in self.ended)

    def _line_ended(self, row: int) -> bool:
        return line_ended(self.tokenizer.decode(self.tokens[row], skip_special_tokens=True))

    def answers(self) -> list[list[int]]:
        """Each sequence's tokens up to its stop (an end-of-sequence token dropped, a newline token
        kept: the scorer reads the first line)."""
        out = []
        for row, end in zip(self.tokens, self.ended):
            out.append(row if end is None else row[: end + (row[end] not in self.eos)])
        return out


def eos_ids(model: HFModel) -> set[int]:
    """End-of-sequence ids of the tokenizer and the model config (which may list several)."""
    ids = {model.tokenizer.eos_token_id}
    configured = getattr(model.hf_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list | tuple) else {configured}
    return {i for i in ids if i is not None}
