"""Seeded draws shared by the text tasks (and meant for token-level twins of them): distinct ids, depth
buckets. Every draw takes the task's local ``random.Random``; none touches the global generator."""

from __future__ import annotations

import math
import random
import sys


def distinct_ints(rng: random.Random, space: int, count: int) -> list[int]:
    """``count`` distinct integers from ``range(space)``, in random order.

    ``random.sample`` needs ``len(range(space))`` to fit a machine integer, so spaces beyond that (32-hex
    UUID-like ids, 2^128) are drawn by rejection, where a repeat is astronomically rare anyway.
    """
    if count > space:
        raise ValueError(f"cannot draw {count} distinct integers from {space}")
    if space <= sys.maxsize:
        return rng.sample(range(space), count)
    drawn: dict[int, None] = {}  # a dict keeps the draw order, so the result is seed-deterministic
    while len(drawn) < count:
        drawn.setdefault(rng.randrange(space))
    return list(drawn)


def depth_bucket(position: float) -> float:
    """``position`` (0 = the start of the context, 1 = its end) rounded to the nearest quarter: 0, 0.25,
    0.5, 0.75 or 1, the depths of a needle-in-a-haystack grid.

    Nearest rather than floor, so a needle placed at depth 0.5 of a haystack whose gaps put it at
    0.495 is still reported at 0.5; the two end buckets are half as wide as the others (ties round
    up), e.g. ``depth_bucket(0.1) == 0.0`` and ``depth_bucket(0.125) == 0.25``.
    """
    return math.floor(4 * position + 0.5) / 4


def relative_position(index: int, count: int) -> float:
    """Where item ``index`` of ``count`` sits, 0 for the first and 1 for the last (0 if it is alone)."""
    return index / (count - 1) if count > 1 else 0.0
