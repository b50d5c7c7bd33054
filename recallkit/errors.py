"""Exceptions that the CLI reports as one clear line."""

from __future__ import annotations

import re

from pydantic import ValidationError


class RecallkitError(Exception):
    """A user-facing error: bad config, impossible task, corrupt file. Printed as one line."""


def first_line(text: str, default: str = "unknown error") -> str:
    """The first non-blank line of an error message (matplotlib's start with a newline)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), default)


UNION_BRANCHES = {"int", "float", "str", "bool", "list", "dict", "tuple", "none"}
"""Location parts pydantic adds for the branches of a union (``budget.int``, ``budget.float``)."""


def one_line(error: ValidationError) -> str:
    """A pydantic validation error as one line: ``field.path: message; ...``. The parts pydantic adds
    for validators and union branches (``function-after[...]``, ``list[...]``, ``int``) are left out
    of the path, and a message repeated for one field is given once."""
    parts: dict[str, None] = {}
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]
                            if not (isinstance(part, str) and ("[" in part or part in UNION_BRANCHES)))
        message = item["msg"].removeprefix("Value error, ")
        parts[f"{location}: {message}" if location else message] = None
    return f"invalid {error.title}: " + "; ".join(parts)


OUT_OF_MEMORY = re.compile(r"can't allocate memory|out of memory|not enough memory", re.IGNORECASE)
"""How torch's CPU allocator (``DefaultCPUAllocator: can't allocate memory``, ``not enough memory``) and
CUDA's (``CUDA out of memory``, also ``torch.OutOfMemoryError``, a RuntimeError) say they failed."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: a MemoryError, or an allocator's RuntimeError."""
    return isinstance(error, MemoryError) or (isinstance(error, RuntimeError)
                                              and OUT_OF_MEMORY.search(str(error)) is not None)
