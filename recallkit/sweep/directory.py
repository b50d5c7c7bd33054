"""Output directories (``--out``): created when missing, or one clear line that says why they cannot be."""

from __future__ import annotations

import errno
from pathlib import Path

from recallkit.errors import RecallkitError


def make_directory(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` (and its parents) if needed and return it.

    Raises:
        RecallkitError: ``path`` or one of its parents is a file, or the OS refuses (permissions, a
            read-only file system, a full disk): one line naming the path and the reason.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RecallkitError(f"cannot use {path} as the {what}: it is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RecallkitError(f"cannot create the {what} {path}: {describe(error)}") from None
    return path


def refuse_links(*paths: Path) -> None:
    """Refuse to write at a symbolic link inside an output directory: the write, or a repair that
    deletes, would land wherever the link points, outside the directory.

    Raises:
        RecallkitError: one of ``paths`` is a symbolic link.
    """
    for path in paths:
        if path.is_symlink():
            raise RecallkitError(f"{path} is a symbolic link; recallkit writes only inside its output "
                                 "directory and does not follow links: remove the link")


DISK_FULL_HINT = "free space and rerun: every finished run is kept in the results database"
"""What a full disk leaves: nothing damaged, every recorded run kept."""


def describe(error: OSError) -> str:
    """An OS error in words, naming the file it concerns when that is another path."""
    if error.errno == errno.ENOTDIR or isinstance(error, FileExistsError):
        reason = "a parent of it is a file, not a directory"
    else:
        reason = error.strerror or type(error).__name__
    reason += f" ({error.filename})" if error.filename else ""
    if error.errno == errno.ENOSPC:  # nothing is damaged: what was recorded stays
        reason += f"; {DISK_FULL_HINT}"
    return reason
