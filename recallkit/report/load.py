"""Reading the runs of a sweep directory for a report, with one-line errors for wrong paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recallkit.errors import RecallkitError
from recallkit.sweep.store import RESULTS_FILE, Store


def read_rows(directory: str | Path) -> list[dict[str, Any]]:
    """Every run stored in ``directory/results.sqlite`` (``Store.rows()``).

    Raises:
        RecallkitError: the directory or its results database does not exist, or is unreadable.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise RecallkitError(f"{directory} is not a directory (expected a sweep's results directory)")
    with Store(directory / RESULTS_FILE, readonly=True) as store:
        return store.rows()
