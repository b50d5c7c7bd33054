"""Text recall tasks (:mod:`recallkit.text_tasks`) answered by a pretrained model's greedy generation.

``evaluate_text`` renders each example's prompt, reads it through the model's own cache once
(``prefill``), and scores the greedy answer by the task's exact match (:mod:`recallkit.hf.greedy`:
the answer is generated token by token, or scored from teacher-forced passes when they decide
it). Under an eviction policy every attention layer holds a :class:`~recallkit.kv.KVCache`: in
``prefill`` mode it is compressed once after the prompt (so the answer comes from what survived),
in ``continuous`` mode the adapter reads the prompt token by token and the caches evict after every
token. ``evaluate_text_grid`` evaluates one task under several settings (no policy, or policy,
budget and mode) and reads each prompt once for all of them in prefill mode
(:mod:`recallkit.hf.prompt_read`). The metrics mirror ``rk.evaluate`` so text results sit on the
same recall-vs-state frontier as the synthetic tasks; ``state_size`` is what the state holds when
the answer begins (after the prompt, compressed).

Prompts are tokenised as the tokenizer does by default: it adds a BOS token exactly when its model
was trained with one (Llama-2 style); SmolLM2's BOS is the chat marker ``<|im_start|>``, which its
tokenizer does not add to plain text. ``chat=True`` wraps the prompt in the tokenizer's chat template
instead: the context and question are the user's turn and the answer cue opens the assistant's. An
instruct model needs it: given the plain prompt, SmolLM2-135M-Instruct ends its turn (``<|im_end|>``)
at once, for accuracy 0.
"""


from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from recallkit.errors import RecallkitError, first_line, is_out_of_memory, one_line
from recallkit.hf.adapter import HFModel
from recallkit.hf.greedy import answer_ids, generate, greedy_match, teacher_forced_argmax
from recallkit.hf.prompt_read import RECORDED_HISTORY, ReadPrompt, fork_state, read_prompt, stack_states
from recallkit.inference.decode import evicting_state
from recallkit.kv import Budget, KVCache, Mode, Policy, make_policy, resolve_budget
from recallkit.text_tasks import TextExample, TextTaskConfig

ANSWER_SLACK = 4
"""Default tokens allowed beyond the longest answer: its newline, and a little room to say it."""
SHOWN_EXAMPLES, PROMPT_TAIL = 3, 200
"""How many examples the result shows for inspection, and how much of each prompt's end (characters)."""

Setting = tuple[Any, Budget, Mode] | None
"""No eviction (None), or an eviction policy (name, dict or Policy), its budget and its mode."""


def evaluate_text(model: HFModel, task: TextTaskConfig, *, num_examples: int = 50, seed: int = 0,
                  read_twice: bool = False, policy: str | dict | Policy | None = None,
                  budget: Budget | None = None, mode: Mode = "prefill", max_new_tokens: int | None = None,
                  batch_size: int = 8, chat: bool | None = None, generate_all: bool = False,
                  on_example: Callable[[int, int], None] | None = None) -> dict:
    """Greedy-generation accuracy of ``model`` on ``num_examples`` examples of ``task`` (seeded).

    Without a policy, examples whose prompts have the same number of tokens are read together, up to
    ``batch_size`` (no padding, so the batch changes nothing), and every answer is generated; with
    one, one example at a time, scored as :func:`evaluate_text_grid` does. ``chat`` renders the
    prompt as a chat turn (see the module docstring); None (the default) does when the tokenizer has a
    chat template, as an instruct model's has. Every check (tokenizer, policy, budget, mode,
    prompt lengths) runs before any model call: a run can take minutes. ``on_example(done, total)``
    reports progress: after each example under a policy, and without one after each batch of
    prompts generated together (before their texts are scored).

    Returns:
        ``accuracy`` (mean exact match), ``num_examples``, ``prefill_tokens`` (mean prompt tokens),
        ``state_size`` (mean numbers held per sequence when the answer begins: ``model.state_size``
        of the prompt, or with a policy the evicting caches' keys and values after the prompt plus
        every other layer's state), ``policy``, ``policy_config``, ``budget``, ``mode``,
        ``budget_tokens`` (the largest, as ``rk.evaluate``), ``read_twice``, ``chat``, ``task``,
        ``setting``, ``max_new_tokens``, ``slices`` (``{name: {str(value): {"accuracy",
        "num_examples"}}}``) and ``examples`` (the first three: prompt tail, answer, generation,
        correct).
    """
    chat = default_chat(model) if chat is None else chat
    if policy is None:
        _check_run(model, None, budget, mode, num_examples, batch_size, chat)
        run = _Run(model, task, num_examples, seed, read_twice, chat, max_new_tokens)
        texts = _generate_batched(model, run.ids, run.max_new_tokens, batch_size, on_example)
        correct = [task.score(t, e.answer) for t, e in zip(texts, run.examples, strict=True)]
        return run.metrics(None, None, mode, [], correct, texts, [model.state_size(len(r)) for r in run.ids])
    return evaluate_text_grid(model, task, [(policy, budget, mode)], num_examples=num_examples, seed=seed,
                              read_twice=read_twice, max_new_tokens=max_new_tokens, chat=chat,
                              generate_all=generate_all, on_example=on_example)[0]


def evaluate_text_grid(model: HFModel, task: TextTaskConfig, settings: Sequence[Setting], *,
                       num_examples: int = 50, seed: int = 0, read_twice: bool = False,
                       max_new_tokens: int | None = None, chat: bool | None = None,
                       generate_all: bool = False,
                       on_example: Callable[[int, int], None] | None = None) -> list[dict]:
    """:func:`evaluate_text`'s metrics for each of ``settings`` on the same examples, in order.

    Each prompt is read once for every setting without eviction or in ``prefill`` mode (each forks
    the read, :mod:`recallkit.hf.prompt_read`); a ``continuous`` setting reads it again, token by
    token. An answer is scored from teacher-forced passes where they decide it
    (:func:`~recallkit.hf.greedy.greedy_match`); the first setting's shown examples, and every
    answer with ``generate_all``, are generated token by token (the other settings' shown
    ``generated`` texts end where their score was decided). All checks run before any model call.
    """
    for setting in settings:
        if setting is not None and (not isinstance(setting, (tuple, list)) or len(setting) != 3):
            raise RecallkitError(f"a grid setting is None or (policy, budget, mode); got {setting!r}")
    if not settings:
        raise RecallkitError("evaluate_text_grid needs at least one setting")
    settings = [_whole_prompt_budget(s) for s in settings]
    chat = default_chat(model) if chat is None else chat
    resolved = [_check_run(model, *(s or (None, None, "prefill")), num_examples, 1, chat) for s in settings]
    run = _Run(model, task, num_examples, seed, read_twice, chat, max_new_tokens)
    budgets = [_check_lengths(run.ids, s and s[1]) if p else [] for p, s in zip(resolved, settings)]
    modes = [s[2] if s else "prefill" for s in settings]
    history = max([RECORDED_HISTORY, *(p.history for p in resolved if p)])
    if any(p is not None for p in resolved) and not model.has_attention:
        raise RecallkitError("eviction policies apply to softmax attention layers, and "
                             f"{model.config.source} has none")
    shared = model.has_attention and any(p is None or m == "prefill" for p, m in zip(resolved, modes))
    outcomes = [[] for _ in settings]  # per setting: (correct, text, held) per example
    for i, (ids, example) in enumerate(zip(run.ids, run.examples, strict=True)):
        with _in_memory(len(ids), 1):
            read = read_prompt(model, ids, history) if shared else None
        shown = i < SHOWN_EXAMPLES  # the first setting's shown answers are generated in full
        unshared = [s for s, mode in enumerate(modes) if read is None or mode == "continuous"]
        for s in unshared:
            policy, budget = resolved[s], budgets[s][i] if resolved[s] else None
            outcomes[s].append(_answer_alone(model, task, ids, example, policy, budget, modes[s],
                                             run.max_new_tokens))
        if read is not None:
            forked = [s for s in range(len(settings)) if s not in unshared]
            specs = [(resolved[s], budgets[s][i] if resolved[s] else None) for s in forked]
            generated = [generate_all or (shown and s == 0) for s in forked]
            answers = _answers_from(model, task, example, read, specs, run.max_new_tokens, generated)
            for s, outcome in zip(forked, answers, strict=True):
                outcomes[s].append(outcome)
        if on_example is not None:
            on_example(i + 1, len(run.ids))
    return [run.metrics(policy, s and s[1], modes[n], budgets[n], *map(list, zip(*outcomes[n])))
            for n, (policy, s) in enumerate(zip(resolved, settings))]


@torch.no_grad()
def _answer_alone(model: HFModel, task: TextTaskConfig, ids: list[int], example: TextExample,
                  policy: Policy | None, budget: int | None, mode: Mode,
                  max_new_tokens: int) -> tuple[bool, str, int]:
    """One example under one setting that reads the prompt itself (continuous mode, or a model
    without attention layers): (correct, greedy text, numbers held when the answer begins)."""
    inputs = torch.tensor([ids], device=model.embed.weight.device)
    if policy is None:
        with _in_memory(len(ids), 1):
            logits, state = model.prefill(inputs)
        held = model.state_size(len(ids))
    else:
        state, caches = evicting_state(model, 1, policy, budget, mode)
        with _in_memory(len(ids), 1):
            logits, state = model.prefill(inputs, state=state)
        held = _held(model, state.position, caches)
    text = generate(model, logits[:, -1], state, max_new_tokens)[0]
    return task.score(text, example.answer), text, held


@torch.no_grad()
def _answers_from(model: HFModel, task: TextTaskConfig, example: TextExample, read: ReadPrompt,
                  specs: list[tuple[Policy | None, int | None]], max_new_tokens: int,
                  generated: list[bool]) -> list[tuple[bool, str, int]]:
    """One example under each (policy, budget tokens) of ``specs``, forked from its prompt's ``read``:
    (correct, greedy text, numbers held when the answer begins) each. The answers flagged in
    ``generated`` are generated token by token; the others are scored by
    :func:`~recallkit.hf.greedy.greedy_match`, whose first block the forks read in few batches
    (:func:`_batches`, :func:`~recallkit.hf.prompt_read.stack_states`)."""
    forks = [fork_state(read, policy, budget) for policy, budget in specs]
    others = _held(model, read.num_tokens, [])  # the recurrent layers: the same for every fork
    held = [others + sum(cache.numel() for cache in caches) for _, caches in forks]
    expected = answer_ids(model, example.answer, task.answer_cue)
    greedy: list[list[int] | None] = [None] * len(specs)
    scored = [n for n in range(len(specs)) if not generated[n] and len(expected) + 1 <= max_new_tokens]
    for rows in _batches([forks[n][1][0] for n in scored], scored):
        stacked = stack_states([forks[n][0] for n in rows], [forks[n][1] for n in rows]) if rows[1:] else None
        if stacked is not None:  # else each reads its own first block in greedy_match
            batch = teacher_forced_argmax(model, read.logits.expand(len(rows), -1), stacked, expected)
            for n, tokens in zip(rows, batch, strict=True):
                greedy[n] = tokens
    out = []
    for n, (policy, budget) in enumerate(specs):
        if generated[n]:
            text = generate(model, read.logits, forks[n][0], max_new_tokens)[0]
            correct = task.score(text, example.answer)
        else:
            unused = [forks[n][0]]  # not continued yet: a stack reads copies

            def fresh_state(policy=policy, budget=budget, unused=unused):
                return unused.pop() if unused else fork_state(read, policy, budget)[0]

            correct, text = greedy_match(model, read.logits, fresh_state, example.answer, task.score,
                                         max_new_tokens, expected=expected, greedy=greedy[n])
        out.append((correct, text, held[n]))
    return out


PADDING = 1024
"""Padded token slots that cost about one forward pass (on 2 cores: a pass of SmolLM2-135M is about
80 ms; a slot is copied when stacked and at each block, 46 kB a time): forks are batched together
while the padding they need stays under it."""


def _batches(caches: list[KVCache], names: list[int]) -> list[list[int]]:
    """``names`` in batches that read one block together: forks whose first attention layers'
    ``caches`` place the next token at one position, longest first, a new batch whenever padding to
    the batch's longest would exceed ``PADDING`` slots."""
    by_position: dict[int, list[tuple[int, int]]] = {}
    for name, kv in zip(names, caches, strict=True):
        by_position.setdefault(kv.next_position, []).append((len(kv), name))
    batches: list[list[int]] = []
    for forks in by_position.values():
        width = padding = None
        for length, name in sorted(forks, key=lambda fork: -fork[0]):
            if width is None or padding + width - length > PADDING:
                batches.append([])
                width, padding = length, 0
            batches[-1].append(name)
            padding += width - length
    return batches


def _held(model: HFModel, tokens: int, caches: list) -> int:
    """Numbers one sequence holds: its evicting caches' keys and values plus every other layer's state
    after ``tokens`` tokens (the recurrent layers of a hybrid)."""
    others = model.state_size(tokens) - model.kv_state_size(tokens)
    return others + sum(cache.numel() for cache in caches)  # one sequence


class _Run:
    """The examples, prompts and token ids of one evaluation, and its metrics."""

    def __init__(self, model: HFModel, task: TextTaskConfig, num_examples: int, seed: int, read_twice: bool,
                 chat: bool, max_new_tokens: int | None) -> None:
        self.task, self.read_twice, self.chat = task, read_twice, chat
        self.examples = task.generate(num_examples, seed)
        if max_new_tokens is None:
            max_new_tokens = max(len(answer_ids(model, e.answer, task.answer_cue))
                                 for e in self.examples) + ANSWER_SLACK
        if max_new_tokens < 1:
            raise RecallkitError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = max_new_tokens
        self.prompts = [render(model, task, e, read_twice, chat) for e in self.examples]
        self.ids = [self._tokens(model, prompt) for prompt in self.prompts]

    def _tokens(self, model: HFModel, prompt: str) -> list[int]:
        """The prompt's ids, refused as soon as one prompt is over the model's context (tokenising a
        long prompt takes seconds: the rest are not read first)."""
        ids = model.tokenizer(prompt, add_special_tokens=not self.chat).input_ids
        if model.max_context is not None and len(ids) + self.max_new_tokens > model.max_context:
            raise RecallkitError(f"a prompt has {len(ids)} tokens; with {self.max_new_tokens} new tokens "
                                 f"that is over {model.config.source}'s context of {model.max_context} "
                                 "tokens")
        return ids

    def metrics(self, policy: Policy | None, budget: Budget | None, mode: Mode, budgets: list[int],
                correct: list[bool], texts: list[str], held: list[int]) -> dict:
        shown = list(zip(self.prompts, self.examples, texts, correct, strict=True))[:SHOWN_EXAMPLES]
        return {
            **_scores(correct), "prefill_tokens": sum(map(len, self.ids)) / len(self.ids),
            "state_size": round(sum(held) / len(held)),
            "policy": policy.name if policy else None,
            "policy_config": policy.model_dump() if policy else None,
            "budget": budget, "mode": mode if policy else None,
            "budget_tokens": max(budgets) if policy else None,
            "read_twice": self.read_twice, "chat": self.chat, "task": self.task.name,
            "setting": self.task.setting, "max_new_tokens": self.max_new_tokens,
            "slices": _slices(self.examples, correct),
            "examples": [{"prompt_tail": p[-PROMPT_TAIL:], "answer": e.answer, "generated": g, "correct": c}
                         for p, e, g, c in shown],
        }


@torch.no_grad()
def _generate_batched(model: HFModel, ids: list[list[int]], max_new_tokens: int, batch_size: int,
                      on_example: Callable[[int, int], None] | None) -> list[str]:
    """Every prompt's greedy answer, in the prompts' order: equal-length prompts read together."""
    generated = [""] * len(ids)
    done = 0
    for rows in _groups(ids, batch_size):
        batch = torch.tensor([ids[i] for i in rows], device=model.embed.weight.device)
        with _in_memory(batch.shape[1], len(rows)):
            logits, state = model.prefill(batch)
        for i, text in zip(rows, generate(model, logits[:, -1], state, max_new_tokens), strict=True):
            generated[i] = text
        done += len(rows)
        if on_example is not None:
            on_example(done, len(ids))
    return generated


@contextlib.contextmanager
def _in_memory(tokens: int, batch: int) -> Iterator[None]:
    """Name the prompt when reading it (the prefill, nothing after it) runs out of memory: a model
    without a context limit (an SSM) takes any prompt, and torch's allocator error gives only a byte
    count. Other errors pass unchanged; the allocator's stays chained for its traceback."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        what = f"{batch} prompts of {tokens:,} tokens" if batch > 1 else f"a prompt of {tokens:,} tokens"
        asked = re.search(r"tried to allocate (\d+) bytes", str(error))
        size = (f"one tensor of {int(asked[1]) / 2**30:.1f} GiB" if asked
                else first_line(str(error), "none left"))
        raise RecallkitError(f"reading {what} needs more memory than this machine has ({size}); use a "
                             "shorter task" + (" or a smaller batch_size" if batch > 1 else "")) from error


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
        resolved = make_policy(policy)
        resolved.budget_or_whole(budget)  # a partial budget for a cache that never evicts is refused
        return resolved
    except ValidationError as error:  # which field, and why
        raise RecallkitError(one_line(error)) from None
    except ValueError as error:
        raise RecallkitError(first_line(str(error))) from None


def default_chat(model: HFModel) -> bool:
    """``chat=None``: a chat turn when the tokenizer has a chat template (an instruct model's has)."""
    return bool(getattr(getattr(model, "tokenizer", None), "chat_template", None))


def _whole_prompt_budget(setting: Setting) -> Setting:
    """A policy that never evicts (``full``) given without a budget holds the whole prompt
    (``Policy.budget_or_whole``)."""
    if setting is None or setting[0] is None or setting[1] is not None:
        return setting
    try:
        return setting[0], make_policy(setting[0]).budget_or_whole(None), setting[2]
    except (ValidationError, ValueError):
        return setting  # ``_check_run`` says what is wrong with it


def _check_lengths(ids: list[list[int]], budget: Budget) -> list[int]:
    """Each prompt's budget in tokens."""
    return [resolve_budget(budget, len(row)) for row in ids]


def _groups(ids: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of prompts with the same token count, in chunks of at most ``batch_size``, in order of
    their first member (so progress follows the examples)."""
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(i)
    return [rows[s : s + batch_size] for rows in by_length.values() for s in range(0, len(rows), batch_size)]


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
