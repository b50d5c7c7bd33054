"""KV budgets: a token count, a fraction of the context length, or kvpress's compression ratio.

A fractional budget ``f`` keeps ``max(1, round(f * T))`` of a T-token context. kvpress (NVIDIA's
KV-compression library) spells budgets as a ``compression_ratio`` r and keeps ``int(T * (1 - r))``
tokens, rounding down: the two differ by one token in many cases (T = 7 at a half: 4 here, 3 in
kvpress; T = 100, r = 0.9: 10 here, 9 in kvpress, since 1 - 0.9 is 0.0999... in floating point).
:func:`budget_from_compression_ratio` and :class:`CompressionRatio` (what ``EvalPolicy(
compression_ratio=r)`` resolves through) follow kvpress exactly, except that at least 1 token is kept.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any

Budget = int | float
"""Tokens per sequence and KV head (int >= 1) or a fraction of the context length (float in (0, 1]);
a :class:`CompressionRatio` is a float too."""


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio < 1:
        raise ValueError(f"a compression ratio must be a number in [0, 1) (the fraction evicted), "
                         f"got {ratio!r}")
    return float(ratio)


def budget_from_compression_ratio(ratio: float, context_len: int) -> int:
    """Tokens kept of ``context_len`` at kvpress's ``compression_ratio``: ``int(T * (1 - ratio))``,
    its ``n_kept`` (floored, float arithmetic as kvpress does it), but at least 1."""
    return max(1, int(context_len * (1 - _check_ratio(ratio))))


class CompressionRatio(float):
    """A fractional budget spelled as kvpress's compression ratio ``r``: as a float it is the kept
    fraction ``1 - r`` (what tables and stored rows show as the budget), and :func:`resolve_budget`
    turns it into :func:`budget_from_compression_ratio` tokens (``int(T * (1 - r))``, at least 1)
    instead of the rounded ``round((1 - r) * T)`` of a plain fraction."""

    compression_ratio: float

    def __new__(cls, compression_ratio: float) -> CompressionRatio:  # noqa: PYI034
        ratio = _check_ratio(compression_ratio)
        self = super().__new__(cls, round(1 - ratio, 12))
        self.compression_ratio = ratio
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return CompressionRatio, (self.compression_ratio,)


def as_number(value: Any) -> Any:
    """A NumPy (or other) integer as an int and real as a float, so that a budget from ``np.arange``
    means what the same Python number means (pydantic read ``np.int64(1)`` as the fraction 1.0: the
    whole context); anything else (bools, CompressionRatio, bad input) unchanged."""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    return value


def resolve_budget(budget: Budget, context_len: int) -> int:
    """Budget in tokens: an int as is, a float as that fraction of ``context_len`` rounded to the
    nearest (``max(1, round(f * T))``; Python rounds halves to even), a :class:`CompressionRatio`
    as kvpress does (``max(1, int(T * (1 - r)))``, rounded down)."""
    if isinstance(budget, CompressionRatio):
        return budget_from_compression_ratio(budget.compression_ratio, context_len)
    budget = as_number(budget)
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ValueError(f"budget must be a token count or a fraction of the context, got {budget!r}")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, round(budget * context_len))
    if budget < 1:
        raise ValueError(f"a token budget must be >= 1, got {budget}")
    return budget
