"""Text recall tasks (:mod:`recallkit.text_tasks`) answered by a pretrained model's greedy generation.

``evaluate_text`` renders each example's prompt, reads it through the model's own cache once
(``prefill``), then feeds back argmax tokens one at a time (``step``) until the answer's line ends, and
scores the text by the task's exact match. Under an eviction policy every attention layer holds a
:class:`~recallkit.kv.KVCache`: in ``prefill`` mode it is compressed once after the prompt (so the
answer is generated from what survived), in ``continuous`` mode the adapter reads the prompt token by
token and the caches evict after every token. The metrics mirror ``rk.evaluate`` so text results sit
on the same recall-vs-state frontier as the synthetic tasks.

Prompts are tokenised as the tokenizer does by default: it adds a BOS token exactly when its model
was trained with one (Llama-2 style); SmolLM2's BOS is the chat marker ``<|im_start|>``, which its
tokenizer does not add to plain text. ``chat=True`` wraps the prompt in the tokenizer's chat template
instead: the context and question are the user's turn and the answer cue opens the assistant's. An
instruct model needs it: given the plain prompt, SmolLM2-135M-Instruct ends its turn (``<|im_end|>``)
at once, for accuracy 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from recallkit.errors import RecallkitError
from recallkit.hf.adapter import HFModel
from recallkit.inference.decode import evicting_state
from recallkit.kv import Budget, Mode, Policy, make_policy, resolve_budget
from recallkit.text_tasks import TextExample, TextTaskConfig

ANSWER_SLACK = 4
"""Default tokens allowed beyond the longest answer: its newline, and a little room to say it."""
SHOWN_EXAMPLES, PROMPT_TAIL = 3, 200
"""How many examples the result shows for inspection, and how much of each prompt's end (characters)."""


def evaluate_text(model: HFModel, task: TextTaskConfig, *, num_examples: int = 50, seed: int = 0,
                  read_twice: bool = False, policy: str | dict | Policy | None = None,
                  budget: Budget | None = None, mode: Mode = "prefill", max_new_tokens: int | None = None,
                  batch_size: int = 8, chat: bool = False,
                  on_example: Callable[[int, int], None] | None = None) -> dict:
    """Greedy-generation accuracy of ``model`` on ``num_examples`` examples of ``task`` (seeded).

    Without a policy, examples whose prompts have the same number of tokens are read together, up to
    ``batch_size`` (no padding, so the batch changes nothing); with one, one example at a time.
    ``chat`` renders the prompt as a chat turn (see the module docstring). Every check (tokenizer,
    policy, budget, mode, prompt lengths) runs before any model call: a run can take minutes.
    ``on_example(done, total)`` is called after each example is scored.

    Returns:
        ``accuracy`` (mean exact match), ``num_examples``, ``prefill_tokens`` (mean prompt tokens),
        ``state_size`` (mean numbers held per sequence at the end: ``model.state_size`` of the tokens
        read, or with a policy the evicting caches' keys and values plus every other layer's state),
        ``policy``, ``policy_config``, ``budget``, ``mode``, ``budget_tokens`` (the largest, as
        ``rk.evaluate``), ``read_twice``, ``chat``, ``task``, ``setting``, ``max_new_tokens``, ``slices``
        (``{name: {str(value): {"accuracy", "num_examples"}}}``) and ``examples`` (the first three:
        prompt tail, answer, generation, correct).
    """
    policy = _check_run(model, policy, budget, mode, num_examples, batch_size, chat)
    examples = task.generate(num_examples, seed)
    prompts = [render(model, task, e, read_twice, chat) for e in examples]
    ids = [model.tokenizer(p, add_special_tokens=not chat).input_ids for p in prompts]
    if max_new_tokens is None:
        max_new_tokens = max(len(_answer_ids(model, e.answer)) for e in examples) + ANSWER_SLACK
    budgets = _check_lengths(model, ids, max_new_tokens, policy, budget)
    generated, held = _generate_all(model, ids, max_new_tokens, policy, budgets, mode, batch_size, on_example)
    correct = [task.score(g, e.answer) for g, e in zip(generated, examples, strict=True)]
    shown = list(zip(prompts, examples, generated, correct, strict=True))[:SHOWN_EXAMPLES]
    return {
        **_scores(correct), "prefill_tokens": sum(map(len, ids)) / len(ids),
        "state_size": round(sum(held) / len(held)),
        "policy": policy.name if policy else None, "policy_config": policy.model_dump() if policy else None,
        "budget": budget, "mode": mode if policy else None, "budget_tokens": max(budgets) if policy else None,
        "read_twice": read_twice, "chat": chat, "task": task.name, "setting": task.setting,
        "max_new_tokens": max_new_tokens, "slices": _slices(examples, correct),
        "examples": [{"prompt_tail": p[-PROMPT_TAIL:], "answer": e.answer, "generated": g, "correct": c}
                     for p, e, g, c in shown],
    }


@torch.no_grad()
def _generate_all(model: HFModel, ids: list[list[int]], max_new_tokens: int, policy: Policy | None,
                  budgets: list[int], mode: Mode, batch_size: int,
                  on_example: Callable[[int, int], None] | None) -> tuple[list[str], list[int]]:
    """Every prompt's generation and final state size, in the prompts' order: equal-length prompts
    together (one at a time under a policy, whose state is built for one sequence)."""
    generated, held = [""] * len(ids), [0] * len(ids)
    done = 0
    for rows in _groups(ids, 1 if policy else batch_size):
        batch = torch.tensor([ids[i] for i in rows], device=model.embed.weight.device)
        budget_tokens = budgets[rows[0]] if policy else None
        texts, sizes = generate(model, batch, max_new_tokens, policy, budget_tokens, mode)
        for i, text, size in zip(rows, texts, sizes, strict=True):
            generated[i], held[i] = text, size
        done += len(rows)
        if on_example is not None:
            on_example(done, len(ids))
    return generated, held


def render(model: HFModel, task: TextTaskConfig, example: TextExample, read_twice: bool, chat: bool) -> str:
    """The prompt's text: the task's own, or with ``chat`` the tokenizer's chat template around it (its
    special tokens written out, so tokenise it without adding more), the answer cue after the
    assistant's header, where the reply begins."""
    prompt = task.prompt(example, read_twice)
    if not chat:
        return prompt
    body = prompt.removesuffix(task.answer_cue).removesuffix("\n")
    turn = [{"role": "user", "content": body}]
    header = model.tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    return header + task.answer_cue


def _check_run(model: HFModel, policy: Any, budget: Budget | None, mode: str, num_examples: int,
               batch_size: int, chat: bool) -> Policy | None:
    """The policy object, after refusing a run that cannot work (one line each)."""
    if getattr(model, "tokenizer", None) is None:
        raise RecallkitError(f"{model.config.source} has no tokenizer: text tasks need one")
    if chat and not getattr(model.tokenizer, "chat_template", None):
        raise RecallkitError(f"{model.config.source}'s tokenizer has no chat template: use chat=False")
    if num_examples < 1 or batch_size < 1:
        raise RecallkitError(f"num_examples and batch_size must be >= 1, got {num_examples} and {batch_size}")
    if policy is None:
        if budget is not None:
            raise RecallkitError("a budget needs an eviction policy")
        return None
    if budget is None:
        raise RecallkitError(f"eviction policy {policy!r} needs a budget (tokens, or a fraction of the "
                             "prompt)")
    if mode not in ("prefill", "continuous"):
        raise RecallkitError(f"unknown eviction mode {mode!r}; use prefill or continuous")
    try:
        resolve_budget(budget, 1)
        return make_policy(policy)
    except ValueError as error:  # pydantic's ValidationError is a ValueError too
        raise RecallkitError(str(error).splitlines()[0]) from None


def _check_lengths(model: HFModel, ids: list[list[int]], max_new_tokens: int, policy: Policy | None,
                   budget: Budget | None) -> list[int]:
    """Each prompt's budget in tokens (empty without a policy), after refusing a prompt that leaves no
    room for the answer in the model's context."""
    if max_new_tokens < 1:
        raise RecallkitError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    longest = max(map(len, ids))
    if model.max_context is not None and longest + max_new_tokens > model.max_context:
        raise RecallkitError(f"the longest prompt has {longest} tokens; with {max_new_tokens} new tokens "
                             f"that is over {model.config.source}'s context of {model.max_context} tokens")
    return [resolve_budget(budget, len(row)) for row in ids] if policy else []


def _answer_ids(model: HFModel, answer: str) -> list[int]:
    """The answer's tokens as the model would write it after the cue ``Answer:`` (a leading space)."""
    return model.tokenizer(" " + answer, add_special_tokens=False).input_ids


def _groups(ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of prompts with the same token count, in chunks of at most ``batch_size``, in order of
    their first member (so progress follows the examples)."""
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(i)
    return [rows[s : s + batch_size] for rows in by_length.values() for s in range(0, len(rows), batch_size)]


def generate(model: HFModel, prompts: Tensor, max_new_tokens: int, policy: Policy | None = None,
             budget_tokens: int | None = None, mode: Mode = "prefill") -> tuple[list[str], list[int]]:
    """Greedy answers to ``prompts`` (B, T) and the numbers each sequence's state holds at the end.

    The prompt is read once; each new token is fed back through ``step`` (the cache is never re-read),
    until every sequence has ended its first non-blank line or emitted an end-of-sequence token. With
    ``policy`` the caches evict: after the prompt in ``prefill`` mode, after every token in
    ``continuous`` mode; every sequence keeps as many tokens, so each holds the caches' numel / B.
    """
    B, T = prompts.shape
    caches = []
    state = None
    if policy is not None:
        state, caches = evicting_state(model, B, policy, budget_tokens, mode)
    logits, state = model.prefill(prompts, state=state)
    for cache in caches:  # the end of the prompt: a prefill-mode cache compresses once
        cache.compress()
    stop = _StopRule(model, B)
    token = logits[:, -1].argmax(-1)
    while not stop.update(token) and len(stop.tokens[0]) < max_new_tokens:
        logits, state = model.step(token, state)
        token = logits.argmax(-1)
    texts = [model.tokenizer.decode(row, skip_special_tokens=True) for row in stop.answers()]
    if policy is None:
        return texts, [model.state_size(T + len(row) - 1) for row in stop.answers(keep_stop=True)]
    read = state.position  # tokens read: every sequence of the group read as many
    others = model.state_size(read) - model.kv_state_size(read)  # recurrent layers of a hybrid
    return texts, [others + sum(cache.numel() for cache in caches) // B] * B


class _StopRule:
    """Tracks generated tokens per sequence and when each one ended: at an end-of-sequence token, or at
    the token that completes the first non-blank line (the scorer strips leading blank lines, so a
    model that opens with a newline is still answering)."""

    def __init__(self, model: HFModel, batch_size: int) -> None:
        self.tokenizer = model.tokenizer
        self.eos = _eos_ids(model)
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
        return "\n" in self.tokenizer.decode(self.tokens[row], skip_special_tokens=True).lstrip()

    def answers(self, keep_stop: bool = False) -> list[list[int]]:
        """Each sequence's tokens up to its stop (the stop token itself with ``keep_stop``; a newline
        token is kept either way, the scorer reads the first line)."""
        out = []
        for row, end in zip(self.tokens, self.ended):
            if end is None:
                out.append(row)
            else:
                keep = keep_stop or row[end] not in self.eos
                out.append(row[: end + keep])
        return out


def _eos_ids(model: HFModel) -> set[int]:
    """End-of-sequence ids of the tokenizer and the model config (which may list several)."""
    ids = {model.tokenizer.eos_token_id}
    configured = getattr(model.hf_config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list | tuple) else {configured}
    return {i for i in ids if i is not None}


def _scores(correct: list[bool]) -> dict:
    return {"accuracy": sum(correct) / len(correct), "num_examples": len(correct)}


def _slices(examples: list[TextExample], correct: list[bool]) -> dict:
    """Accuracy per value of every slice, values in ascending order, keyed by ``str(value)``."""
    names = sorted({name for e in examples for name in e.slices})
    out: dict = {}
    for name in names:
        values = sorted({e.slices[name] for e in examples if name in e.slices},
                        key=lambda v: (type(v).__name__, v))
        out[name] = {str(v): _scores([c for e, c in zip(examples, correct) if e.slices.get(name) == v])
                     for v in values}
    return out
