"""Exceptions that the CLI reports as one clear line."""


class RecallkitError(Exception):
    """A user-facing error: bad config, impossible task, corrupt file. Printed as one line."""
