"""Exceptions that the CLI reports as one clear line."""

from __future__ import annotations

from pydantic import ValidationError


class RecallkitError(Exception):
    """A user-facing error: bad config, impossible task, corrupt file. Printed as one line."""


def first_line(text: str, default: str = "unknown error") -> str:
    """The first non-blank line of an error message (matplotlib's start with a newline)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), default)


def one_line(error: ValidationError) -> str:
    """A pydantic validation error as one line: ``field.path: message; ...``."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return f"invalid {error.title}: " + "; ".join(parts)
