"""Comparing sweep directories: their runs on one frontier, each label prefixed by its directory."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recallkit.errors import RecallkitError
from recallkit.report.frontier import frontier_points, plot_frontier
from recallkit.report.html import write_html
from recallkit.report.load import read_rows
from recallkit.sweep.directory import make_directory

PAGE, FIGURE = "compare.html", "compare.png"
"""File names of a comparison, distinct from a directory's own report.html and frontier.png."""


def source_names(directories: list[Path]) -> list[str]:
    """Short distinct names: the directory names, or ``parent/name`` where two names clash.

    Raises:
        RecallkitError: fewer than two directories, or one given twice.
    """
    if len(directories) < 2:
        raise RecallkitError("a comparison needs at least two results directories")
    resolved = [d.resolve() for d in directories]
    if len(set(resolved)) < len(resolved):
        raise RecallkitError("a directory is given twice: compare different results directories")
    names = [d.name for d in resolved]
    if len(set(names)) < len(names):
        names = [f"{d.parent.name}/{d.name}" for d in resolved]
    if len(set(names)) < len(names):
        names = [str(d) for d in resolved]
    return names


def prefixed(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """Copies of ``rows`` labelled ``"name: label"``; run ids get the prefix too, because two
    directories hold the same run id when they ran the same config (e.g. on different machines), and
    so does the run a halving note names."""
    return [{**row, "label": f"{name}: {row['label']}", "run_id": f"{name}:{row['run_id']}",
             "metrics": _prefixed_note(row["metrics"], name)} for row in rows]


def _prefixed_note(metrics: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    note = (metrics or {}).get("halted")
    if not isinstance(note, str):
        return metrics
    return {**metrics, "halted": re.sub(r"; run ([0-9a-f]+)\)$", lambda run: f"; run {name}:{run[1]})", note)}


def write_compare(directories: list[str | Path], out: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``compare.png`` and ``compare.html``: the runs of every directory on one frontier.

    Args:
        directories: two or more sweep directories (each with a ``results.sqlite``).
        out: where to write the two files; default: the first directory.

    Returns:
        The PNG and the HTML page.
    """
    directories = [Path(d) for d in directories]
    names = source_names(directories)
    tables = [read_rows(d) for d in directories]
    rows = [row for name, table in zip(names, tables) for row in prefixed(table, name)]
    out = Path(out) if out is not None else directories[0]
    make_directory(out, "report directory")
    points = frontier_points(rows)
    title = " vs ".join(names)
    png = plot_frontier(points, out / FIGURE, title=f"Recall vs inference state: {title}")
    notes = [
        "Comparing " + "; ".join(f"{name} = {d.resolve()} ({len(t)} runs)"
                                 for name, d, t in zip(names, directories, tables))
        + ". Labels and run ids are prefixed with the directory name."
    ]
    page = write_html(rows, points, out / PAGE, f"recallkit: {title}", [(png, "accuracy vs inference state")],
                      notes)
    return png, page
