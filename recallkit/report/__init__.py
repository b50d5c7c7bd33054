"""Reports of sweep directories: the frontier PNG and a self-contained interactive HTML page, for one
directory (``write_report``) or several on one frontier (``write_compare``)."""

from __future__ import annotations

from pathlib import Path

from recallkit.report.capability import has_capability_axis, plot_capability_map
from recallkit.report.common import FrontierPoint
from recallkit.report.compare import write_compare
from recallkit.report.frontier import frontier_points, plot_frontier
from recallkit.report.html import write_html
from recallkit.report.length_curves import length_curves, plot_length_curves
from recallkit.report.load import read_rows
from recallkit.report.width import has_width_axis, plot_width_curves
from recallkit.sweep.directory import make_directory


def write_report(out_dir: str | Path, title: str | None = None,
                 dest: str | Path | None = None) -> tuple[Path, Path]:
    """Read ``out_dir/results.sqlite`` and write ``frontier.png`` and ``report.html``, plus ``width.png``
    (accuracy vs width) when the sweep varied the model width, ``capability.png`` (accuracy per
    family and task setting) when two or more families met two or more task settings, and
    ``lengths.png`` (accuracy vs length) when runs were evaluated at several lengths.

    Args:
        out_dir: the sweep directory.
        title: page title; default ``recallkit: <directory name>``.
        dest: where to write the files; default: ``out_dir`` itself.
    """
    out_dir = Path(out_dir)
    rows = read_rows(out_dir)
    dest = Path(dest) if dest is not None else out_dir
    make_directory(dest, "report directory")
    title = title or f"recallkit: {out_dir.resolve().name}"
    points = frontier_points(rows)
    png = plot_frontier(points, dest / "frontier.png", title="Recall vs inference state")
    pngs = [(png, "accuracy vs inference state")]
    if has_width_axis(points):
        pngs.append((plot_width_curves(points, dest / "width.png"), "accuracy vs model width"))
    if has_capability_axis(points):
        pngs.append((plot_capability_map(points, dest / "capability.png"), "capability map"))
    if curves := length_curves(rows):
        pngs.append((plot_length_curves(curves, dest / "lengths.png"), "exact match vs length"))
    page = write_html(rows, points, dest / "report.html", title, pngs)
    return png, page


__all__ = [
    "FrontierPoint", "frontier_points", "plot_frontier", "plot_width_curves", "write_compare", "write_html",
    "write_report",
]
