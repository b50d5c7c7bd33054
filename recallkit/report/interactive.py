"""The interactive frontier: the PNG's panels as plotly subplots, a legend that toggles model families
and a hover box with the full config of the run behind each point."""

from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from recallkit.report.common import (
    FrontierPoint,
    accuracy_text,
    base_panel,
    error_bars,
    family_colors,
    off_log_axis,
    plotly_text,
    tag_fields,
    varying_settings,
)
from recallkit.report.hover import config_lines
from recallkit.report.slices import panel_evals

COLUMNS = 3
"""Subplots per row: three panels (e.g. T = 64, 128, 256) fit a laptop screen side by side."""


def _hover(point: FrontierPoint, tag: str, row: dict[str, Any] | None) -> str:
    head = f"<b>{plotly_text(point.label)}</b>" + (f"  {plotly_text(tag)}" if tag else "")
    facts = [f"accuracy {accuracy_text(point)}", f"state {point.state_size:,}",
             *([f"d_model {point.d_model}"] if point.d_model else []),
             *([f"lr {point.lr:g}"] if point.lr is not None else []), f"best of {point.runs}"]
    if point.budget is not None:
        facts.insert(2, f"KV budget {point.budget:g}")
    run = f"run {point.run_id}" + (f" · {point.wall_time:.1f} s" if point.wall_time else "")
    policy = _policy_line(point, row) if row and point.budget is not None else []
    config = config_lines(row["config"]) if row else []
    per_seed = ", ".join(f"{seed}: {a:.3f}" for (seed, _), a in zip(point.seed_runs, point.seeds))
    seeds = [f"seeds {per_seed} (the best one's run below)"] if point.seeds else []
    return "<br>".join([head, " · ".join(facts), *seeds, run, *policy, *config])


def _policy_line(point: FrontierPoint, row: dict[str, Any]) -> list[str]:
    """The eviction policy behind a point of an eviction panel, with its settings (one line)."""
    evals = panel_evals(row)
    stored = evals[point.evaluation][1] if point.evaluation < len(evals) else {}
    if not stored.get("policy"):
        return []
    settings = dict(stored.get("policy_config") or {})
    settings.pop("name", None)
    pairs = " ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
    tokens = f" ({stored['budget_tokens']} tokens)" if stored.get("budget_tokens") is not None else ""
    return [html.escape(f"policy: {stored['policy']} budget={stored['budget']:g}{tokens} "
                        f"mode={stored.get('mode')} {pairs}".strip())]


def _error_bars(line: list[FrontierPoint]) -> dict[str, Any] | None:
    """Plotly error bars of the points' seed intervals (zero where a point has one seed), as the PNG's
    (``error_bars``: never negative)."""
    if not any(p.interval for p in line):
        return None
    seeded = [p for p in line if p.interval]
    below, above = (iter(side) for side in error_bars(seeded))
    return {"type": "data", "symmetric": False, "thickness": 1.2, "width": 3,
            "array": [next(above) if p.interval else 0 for p in line],
            "arrayminus": [next(below) if p.interval else 0 for p in line]}


def _line(points: list[FrontierPoint], panel: str, label: str) -> list[FrontierPoint]:
    return sorted((p for p in points if p.panel == panel and p.label == label), key=lambda p: p.state_size)


def frontier_figure(points: list[FrontierPoint], rows: list[dict[str, Any]]) -> go.Figure:
    """One subplot per panel (x = state size, log; y = accuracy), one trace per label and panel.

    Traces of one label share a legend group, so a legend click shows or hides a family in every
    panel. As in the PNG, an eviction panel repeats the models of its base panel faintly (dashed,
    squares) for reference.

    Args:
        points: frontier points (``frontier_points``), not empty.
        rows: the store rows they came from (for the full config in the hover box).
    """
    by_id = {row["run_id"]: row for row in rows}
    panels = list(dict.fromkeys(p.panel for p in points))
    labels = sorted({p.label for p in points})
    colors = family_colors(labels)
    columns = min(COLUMNS, len(panels))
    grid_rows = math.ceil(len(panels) / columns)
    figure = make_subplots(rows=grid_rows, cols=columns, subplot_titles=[plotly_text(p) for p in panels],
                           shared_yaxes=True,
                           horizontal_spacing=0.04, vertical_spacing=0.22 / grid_rows)
    in_legend: set[str] = set()
    for i, panel in enumerate(panels):
        reference = base_panel(panel)
        unplotted = "; ".join(filter(None, (off_log_axis(_line(points, panel, label)) for label in labels)))
        if unplotted:  # plotly drops x <= 0 from a log axis without a word
            figure.add_annotation(text=plotly_text("not on the log axis: " + unplotted),
                                  xref="x domain", yref="y domain", x=0.98, y=0.02, showarrow=False,
                                  xanchor="right", yanchor="bottom", font={"size": 10, "color": "#555"},
                                  row=i // columns + 1, col=i % columns + 1)
        for label in labels:
            line, faint = _line(points, panel, label), False
            if not line and reference is not None:
                line, faint = _line(points, reference, label), True
            if not line:
                continue
            tags = varying_settings([tag_fields(p) for p in line])
            figure.add_trace(
                go.Scatter(
                    x=[p.state_size for p in line], y=[p.accuracy for p in line],
                    mode="lines+markers", name=plotly_text(label), legendgroup=label,
                    showlegend=label not in in_legend,
                    line={"color": colors[label], "dash": "dash" if faint else "solid"},
                    marker={"symbol": "square" if faint else "circle", "size": 8},
                    opacity=0.45 if faint else 1,
                    hovertext=[_hover(p, tag, by_id.get(p.run_id)) for p, tag in zip(line, tags)],
                    error_y=_error_bars(line),
                    hoverinfo="text",
                ),
                row=i // columns + 1, col=i % columns + 1,
            )
            in_legend.add(label)
    figure.update_xaxes(type="log", tickformat="~s", title_text="inference state (numbers per sequence)",
                        title_font_size=11)
    figure.update_yaxes(range=[-0.03, 1.05], title_text="accuracy", col=1)
    figure.update_layout(
        title="Recall vs inference state", title_font_size=14, height=120 + 380 * grid_rows,
        hovermode="closest",
        legend={"title": {"text": "model"}, "groupclick": "togglegroup"},
    )
    return figure
