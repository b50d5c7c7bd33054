"""One writer per results directory: an advisory lock held while a sweep runs.

The lock (``DIR/results.lock``, ``fcntl.flock``) dies with its process, so a SIGKILLed sweep never
leaves it behind; the next driver takes it and knows that every ``running`` row is stale.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recallkit.errors import RecallkitError
from recallkit.sweep.directory import describe, make_directory

LOCK_FILE = "results.lock"


@contextmanager
def writer_lock(out_dir: Path) -> Iterator[None]:
    """Hold the directory's writer lock, or fail at once with who holds it."""
    make_directory(out_dir, "results directory")
    path = out_dir / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise RecallkitError(f"cannot write to the results directory {out_dir}: {describe(error)}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise RecallkitError(f"another sweep (pid {holder}) is writing {out_dir}; "
                                 "wait for it or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_locked(out_dir: Path) -> bool:
    """Whether a live sweep holds the directory's writer lock."""
    path = out_dir / LOCK_FILE
    if not path.exists():
        return False
    with open(path) as handle:  # read-only: a reader of a read-only directory can ask too
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False
