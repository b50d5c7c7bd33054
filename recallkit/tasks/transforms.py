"""JRT-Prompt (Just Read Twice, arXiv 2407.05483) as a task transform: repeat the context before the rest."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, SerializeAsAny, model_validator

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import IGNORE_INDEX, Batch


def max_context_len(task: TaskConfig) -> int:
    """Exact upper bound of ``prefix_len`` over every example ``task`` can generate (its
    ``max_prefix_len()``, which every task read twice must declare)."""
    bound = task.max_prefix_len()
    if bound is None:
        raise ValueError(f"read_twice needs task {task.name!r} to define max_prefix_len() "
                         "(the longest context)")
    return int(bound)


def filler_token(task: TaskConfig) -> int:
    """The token ``task`` pads with (its ``filler_token``, which every task read twice must declare)."""
    if task.filler_token is None:
        raise ValueError(f"read_twice needs task {task.name!r} to define filler_token (its padding id)")
    return int(task.filler_token)


class ReadTwiceConfig(TaskConfig):
    """JRT-Prompt: every example's context (its first ``prefix_len`` tokens) is read ``repeats`` times.

    An inner example ``context (P tokens) + rest`` becomes ``context x repeats + rest``, right-padded
    to ``seq_len`` with the inner filler token and unscored labels. Only the last copy keeps the inner
    context labels (a label at P - 1 predicts the first token of the rest and stays aligned); earlier
    copies are unscored. Labels after the context move by ``(repeats - 1) * P``; ``prefix_len`` becomes
    ``repeats * P``, which is also the number of prefill tokens per example (the compute cost of the
    longer prompt; ``rk.evaluate`` reports its mean as ``prefill_tokens``); slices are unchanged.
    ``vocab_size`` is the inner one and ``seq_len`` = inner
    ``seq_len + (repeats - 1) * max_context_len(inner)``, exact, so a model's ``state_size(seq_len)``
    is the state after the longest repeated prompt. Both are derived; passing them (as a dumped
    config does) is allowed only with the derived values.

    Worked example, ``read_twice(MQARConfig(vocab_size=8, seq_len=8, num_kv_pairs=2)).generate(1, seed=0)``
    (the inner example is MQAR's worked example, context ``3 4 2 7``):

        inputs     3  4  2  7  3  4  2  7  3  0  2  0
        labels     .  .  .  .  .  .  .  .  4  .  7  .       '.' = -100 (not scored)
        prefix_len 8
    """

    name: Literal["read_twice"] = "read_twice"
    task: SerializeAsAny[TaskConfig]
    repeats: int = Field(default=2, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _derive_sizes(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "task" not in data:
            return data
        inner = TaskConfig.resolve(data["task"])
        # ValueError, not TypeError: pydantic turns only the former into a ValidationError
        if not isinstance(inner, TaskConfig):
            raise ValueError("read_twice needs task= a task config or a task dict")  # noqa: TRY004
        if isinstance(inner, ReadTwiceConfig):
            raise ValueError("read_twice of read_twice is not supported; use repeats=k")  # noqa: TRY004
        repeats = data.get("repeats", 2)
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ValueError(f"read_twice needs an integer repeats >= 1; got {repeats!r}")
        seq_len = inner.seq_len + (repeats - 1) * max_context_len(inner)
        derived = {"vocab_size": inner.vocab_size, "seq_len": seq_len}
        for key, value in derived.items():
            if data.get(key, value) != value:
                raise ValueError(f"read_twice derives {key}={value} from its task; got {key}={data[key]}")
        return {**data, **derived, "task": inner}

    @property
    def setting(self) -> str:
        """The inner task's panel: read-twice runs sit on the frontier of the task they read."""
        return self.task.setting

    @property
    def generative(self) -> bool:  # type: ignore[override]
        """The inner task's: its answer is still one span (later, by the repeated context), and read-twice
        runs of a generative task are scored on greedy generation as the plain runs beside them. It
        has no length axis (``eval_lengths`` is refused)."""
        return self.task.generative

    def max_prefix_len(self) -> int:
        """Longest repeated context: ``repeats * max_context_len(task)`` prefill tokens."""
        return self.repeats * max_context_len(self.task)

    @property
    def filler_token(self) -> int:
        """The inner task's padding token."""
        return filler_token(self.task)

    def generate(self, num_examples: int, seed: int) -> Batch:
        """The inner task's batch for ``seed`` with every context repeated: (N, seq_len)."""
        inner = self.task.generate(num_examples, seed)
        T_in = inner.inputs.shape[1]
        P = inner.prefix_len[:, None]  # (N, 1) inner context lengths
        t = torch.arange(self.seq_len)[None]  # (1, T)
        shift = (self.repeats - 1) * P  # (N, 1): how far the rest moves right
        in_context = t < self.repeats * P  # (N, T)
        source = torch.where(in_context, t % P.clamp(min=1), t - shift)  # (N, T): inner position read at t
        valid = source < T_in  # past the shifted inner sequence = padding
        index = source.clamp(max=T_in - 1)
        inputs = torch.where(valid, inner.inputs.gather(1, index), self.filler_token)
        scored = valid & (t >= shift)  # earlier context copies are unscored
        labels = torch.where(scored, inner.labels.gather(1, index), IGNORE_INDEX)
        return Batch(inputs, labels, self.repeats * inner.prefix_len, dict(inner.slices))


def read_twice(task: TaskConfig | dict[str, Any], repeats: int = 2) -> ReadTwiceConfig:
    """Wrap ``task`` (a config or ``{"name": key, ...}``) in JRT-Prompt: ``repeats`` copies of its context."""
    return ReadTwiceConfig(task=task, repeats=repeats)
