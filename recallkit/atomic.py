"""Files written whole or not at all: a sibling ``*.partial`` file, then an atomic rename.

A crash or a full disk mid-write leaves the previous file (or none) and at most a leftover partial
file (``recallkit doctor`` lists and removes them), never half a file that a later run would trust.
The rename replaces a symbolic link at the destination instead of writing through it, so a link
planted in an output directory cannot send a write outside it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

PARTIAL_SUFFIX = ".partial"


def write_whole(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` by calling ``write(partial)`` on a sibling ``<name>.<pid>.partial`` and renaming
    it over ``path``; on an error the partial file is removed and the error raised."""
    path = Path(path)
    partial = path.with_name(f"{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
