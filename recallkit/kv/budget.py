"""KV budgets: a token count, or a fraction of the context length."""

from __future__ import annotations

Budget = int | float
"""Tokens per sequence and KV head (int >= 1) or a fraction of the context length (float in (0, 1])."""


def resolve_budget(budget: Budget, context_len: int) -> int:
    """Budget in tokens: an int as is, a float as that fraction of ``context_len`` (at least 1)."""
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ValueError(f"budget must be a token count or a fraction of the context, got {budget!r}")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, round(budget * context_len))
    if budget < 1:
        raise ValueError(f"a token budget must be >= 1, got {budget}")
    return budget
