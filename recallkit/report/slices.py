"""Per-slice accuracy tables: for each panel and slice (e.g. ``num_kv_pairs``), the accuracy of every
frontier model on each value of the slice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from recallkit.report.common import FrontierPoint, panel_name
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

    A slice with one value in a panel only repeats the headline accuracy and is left out; so are
    diverged runs (their slices measure nothing).

    Args:
        rows: store rows.
        points: their frontier points (``frontier_points``): one table row per point.
    """
    by_id = {row["run_id"]: row for row in rows}
    tables: dict[tuple[str, str], SliceTable] = {}
    for panel in dict.fromkeys(p.panel for p in points):
        line = [p for p in points if p.panel == panel and by_id[p.run_id]["status"] == "done"]
        for point, name in zip(line, point_names(line)):
            for eval_panel, stored in panel_evals(by_id[point.run_id]):
                if eval_panel != panel or stored.get("policy") or "length" in stored:
                    continue
                for slice_name, values in (stored.get("slices") or {}).items():
                    table = tables.setdefault((panel, slice_name), SliceTable(panel, slice_name, []))
                    table.rows.append((name, values))
                break
    for table in tables.values():
        table.values = sorted({value for _, values in table.rows for value in values}, key=_sort_key)
    return [table for table in tables.values() if len(table.values) > 1]
