"""One writer per results directory: an advisory lock held while a sweep runs.

The lock is ``fcntl.flock`` on the directory itself, and on ``DIR/results.lock``, which also holds
the writer's pid for the message a second writer gets. Locking the directory means that deleting
``results.lock`` mid-sweep does not let a second writer in. Both locks die with their process, so
a SIGKILLed sweep never leaves them behind; the next driver takes them and knows that every
``running`` row is stale.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recallkit.errors import RecallkitError
from recallkit.sweep.directory import describe, make_directory, refuse_links
from recallkit.sweep.store import RESULTS_FILE, Store

LOCK_FILE = "results.lock"


@contextmanager
def writer_lock(out_dir: Path) -> Iterator[None]:
    """Hold the directory's writer lock, or fail at once with who holds it."""
    make_directory(out_dir, "results directory")
    path = out_dir / LOCK_FILE
    refuse_links(path)  # opened to write: through a link it would truncate the file linked to
    try:
        directory = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise RecallkitError(f"cannot open the results directory {out_dir}: {describe(error)}") from None
    try:
        try:
            handle = open(path, "a+")
        except OSError as error:
            raise RecallkitError(f"cannot write to the results directory {out_dir}: "
                                 f"{describe(error)}") from None
        with handle:
            try:
                fcntl.flock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
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
    finally:
        os.close(directory)  # releases the directory's lock


def is_locked(out_dir: Path) -> bool:
    """Whether a live sweep holds the directory's writer lock (read-only: any reader may ask)."""
    if not out_dir.is_dir():
        return False
    for path in (out_dir, out_dir / LOCK_FILE):  # the file too: a driver of an earlier version locks only it
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock this check took
    return False


@contextmanager
def writing(out_dir: Path) -> Iterator[Store]:
    """The directory's results store, open to write under its writer lock. A database of another
    program (or schema) is refused before even the lock file is written."""
    refuse_links(out_dir / RESULTS_FILE)
    if (out_dir / RESULTS_FILE).exists():
        Store(out_dir / RESULTS_FILE, readonly=True).close()
    with writer_lock(out_dir), Store(out_dir / RESULTS_FILE) as store:
        yield store
