"""Tasks with a length axis (copy length, sequence length, phone-book entries): length generalisation.

A task with a length axis draws a length per example from ``length_range()``, records it in the
``length`` slice, and can be rebuilt at one fixed length with ``at_length(L)`` (with ``seq_len``
grown to fit), which is how a run evaluates beyond its training range (``RunConfig.eval_lengths``).
``bits_per_unit()`` is the information one unit of length carries (log2 of the alphabet for a
uniformly random string), so ``L * bits_per_unit()`` bits is what a model must hold to answer
(Jelassi et al. 2024, arXiv 2402.01032: a fixed state of b bits cannot copy more than b bits).
"""

from __future__ import annotations

from typing import Protocol

from recallkit.base_config import TaskConfig


class LengthAxis(Protocol):
    """What a task with a length axis provides besides the task contract (for type checkers: every
    :class:`TaskConfig` has these members, raising on a task without a ``length_unit``)."""

    length_unit: str  # e.g. "characters", "tokens", "entries"

    def length_range(self) -> tuple[int, int]:
        """Lowest and highest length the task draws (inclusive)."""
        ...

    def at_length(self, length: int) -> TaskConfig:
        """The same task with every example at ``length`` and ``seq_len`` exactly what that needs (so a
        model's ``state_size(seq_len)`` is its state at the end of such an example)."""
        ...

    def bits_per_unit(self) -> float:
        """Bits of information per unit of length that the answer depends on."""
        ...


def has_length_axis(task: TaskConfig) -> bool:
    """Whether ``task`` can be evaluated at other lengths (it declares a ``length_unit``)."""
    return task.has_length_axis


class MinMaxLength:
    """A length axis drawn from [``min_len``, ``max_len``] (a mixin placed before :class:`TaskConfig`):
    ``at_length(L)`` fixes both to L and sizes ``seq_len`` by the task's ``seq_len_for(L)``."""

    def length_range(self) -> tuple[int, int]:
        return self.min_len, self.max_len

    def at_length(self, length: int) -> TaskConfig:
        fields = {"min_len": length, "max_len": length, "seq_len": self.seq_len_for(length)}
        return self.model_validate(self.model_dump() | fields)
