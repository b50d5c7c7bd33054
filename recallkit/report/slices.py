"""Per-slice accuracy tables: for each panel and slice (e.g. ``num_kv_pairs``), the accuracy of every
frontier model on each value of the slice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recallkit.report.common import FrontierPoint, base_panel, panel_name
from recallkit.report.hover import point_names


@dataclass
class SliceTable:
    """Accuracy per value of one slice in one panel; ``rows`` are (model name, {value: metrics})."""

    panel: str
    name: str
    values: list[str]
    rows: list[tuple[str, dict[str, dict[str, Any]]]] = field(default_factory=list)


def panel_evals(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A run's stored evaluations (with their slices) and the frontier panel of each, eviction and
    other-length evaluations included.

    A run stored before ``metrics["evals"]`` existed has one evaluation: its headline metrics.
    """
    metrics = row["metrics"] or {}
    if not metrics.get("evals"):
        task = row["config"]["task"]
        return [(panel_name({"task": task["name"], "seq_len": task["seq_len"]}), metrics)]
    return [(panel_name(e), e) for e in metrics["evals"]]


def _sort_key(value: str) -> tuple[int, float | str]:
    """Numeric values in numeric order (2 < 16), others after them alphabetically."""
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def slice_tables(rows: list[dict[str, Any]], points: list[FrontierPoint]) -> list[SliceTable]:
    """The slice tables of every panel without eviction, in frontier order.

    A point's row is the mean over its seeds (the runs the frontier averaged: a diverged seed counts
    0, as there), with ``seeds`` the count; a point with no finished seed is left out, and so is a
    slice with one value in a panel (it only repeats the headline accuracy).

    Args:
        rows: store rows.
        points: their frontier points (``frontier_points``): one table row per point.
    """
    by_id = {row["run_id"]: row for row in rows}
    tables: dict[tuple[str, str], SliceTable] = {}
    for panel in dict.fromkeys(p.panel for p in points if base_panel(p.panel) is None):  # no eviction
        line = [p for p in points if p.panel == panel]
        for point, name in zip(line, point_names(line)):
            runs = [by_id[run_id] for _, run_id in point.seed_runs] or [by_id[point.run_id]]
            done = [_slices(run, point.evaluation) for run in runs if run["status"] == "done"]
            diverged = len(runs) - len(done)
            for slice_name in dict.fromkeys(key for slices in done for key in slices):
                values = dict.fromkeys(v for slices in done for v in slices.get(slice_name, {}))
                table = tables.setdefault((panel, slice_name), SliceTable(panel, slice_name, []))
                table.rows.append((name, {v: _mean(done, slice_name, v, diverged) for v in values}))
    for table in tables.values():
        table.values = sorted({value for _, values in table.rows for value in values}, key=_sort_key)
    return [table for table in tables.values() if len(table.values) > 1]


def _slices(row: dict[str, Any], evaluation: int) -> dict[str, dict[str, dict[str, Any]]]:
    """A finished run's slices in its stored evaluation number ``evaluation`` (a frontier point's:
    two evaluations of one run may share a panel, a task at two pair counts or read once and twice)."""
    evals = panel_evals(row)
    return (evals[evaluation][1].get("slices") or {}) if evaluation < len(evals) else {}


def _mean(done: list[dict], slice_name: str, value: str, diverged: int) -> dict[str, Any]:
    """One slice value's mean accuracy over the finished runs that scored it (``done``: each run's
    slices) and the ``diverged`` ones, at 0; ``seeds`` counts both."""
    scored = [slices[slice_name][value] for slices in done if value in slices.get(slice_name, {})]
    seeds = len(scored) + diverged
    return {"accuracy": sum(metrics["accuracy"] for metrics in scored) / seeds, "seeds": seeds,
            "num_examples": scored[0].get("num_examples")}
