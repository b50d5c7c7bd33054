"""Reports of a sweep directory: the frontier PNG and a self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

from recallkit.report.frontier import frontier_points, plot_frontier
from recallkit.report.html import write_html
from recallkit.report.width import has_width_axis, plot_width_curves
from recallkit.sweep.runner import RESULTS_FILE
from recallkit.sweep.store import Store


def write_report(out_dir: str | Path, title: str | None = None) -> tuple[Path, Path]:
    """Read ``out_dir/results.sqlite`` and write ``frontier.png`` and ``report.html`` beside it, plus
    ``width.png`` (accuracy vs width) when the sweep varied the model width."""
    out_dir = Path(out_dir)
    with Store(out_dir / RESULTS_FILE, create=False) as store:
        rows = store.rows()
    title = title or f"recallkit: {out_dir.name}"
    points = frontier_points(rows)
    png = plot_frontier(points, out_dir / "frontier.png", title="Recall vs inference state")
    width_png = plot_width_curves(points, out_dir / "width.png") if has_width_axis(points) else None
    page = write_html(rows, points, png, out_dir / "report.html", title, width_png)
    return png, page


__all__ = ["frontier_points", "plot_frontier", "plot_width_curves", "write_html", "write_report"]
