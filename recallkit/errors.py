"""Exceptions that the CLI reports as one clear line."""

from __future__ import annotations

from pydantic import ValidationError


class RecallkitError(Exception):
    """A user-facing error: bad config, impossible task, corrupt file. Printed as one line."""


def one_line(error: ValidationError) -> str:
    """A pydantic validation error as one line: ``field.path: message; ...``."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return f"invalid {error.title}: " + "; ".join(parts)
