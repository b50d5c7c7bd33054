"""Learning curves: training loss and test accuracy against step, one legend entry per run, and a
menu that shows one model family at a time."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from recallkit.report.common import family_colors, plotly_text, varying_settings
from recallkit.report.slices import panel_evals


def run_names(rows: list[dict[str, Any]]) -> list[str]:
    """Per run: its label plus the settings (model or training) that vary among runs of that label,
    and its evaluation setting (e.g. ``mqar T=64``) when the runs span several."""
    settings = [panel_evals(row)[0][0] for row in rows]
    several = len(set(settings)) > 1
    names = []
    for row, setting in zip(rows, settings):
        group = [r for r in rows if r["label"] == row["label"]]
        varying = varying_settings([{"model": r["config"]["model"], "train": r["config"].get("train", {})}
                                    for r in group])
        index = next(i for i, r in enumerate(group) if r is row)
        tail = f"[{setting}]" if several else ""
        names.append(" ".join(filter(None, (row["label"], varying[index], tail))))
    return names


def curves_figure(rows: list[dict[str, Any]]) -> go.Figure | None:
    """Loss (left, log) and accuracy (right) against step for every run with a stored curve.

    The two traces of a run share a legend group (one click hides both); the menu above the plot
    shows all runs or one label. Returns None when no run has a curve.
    """
    rows = [r for r in rows if (r["metrics"] or {}).get("curve")]
    if not rows:
        return None
    colors = family_colors([r["label"] for r in rows])
    figure = make_subplots(rows=1, cols=2, subplot_titles=["training loss", "test accuracy"],
                           horizontal_spacing=0.08)
    traces_label = []
    for row, name in zip(rows, map(plotly_text, run_names(rows))):
        curve = row["metrics"]["curve"]
        hover = f"{name}<br>run {row['run_id']} · {row['status']}<br>step %{{x}}: %{{y:.3g}}<extra></extra>"
        common = {"name": name, "legendgroup": row["run_id"], "line": {"color": colors[row["label"]]},
                  "mode": "lines", "hovertemplate": hover}
        figure.add_trace(go.Scatter(x=[c["step"] for c in curve], y=[c["loss"] for c in curve], **common),
                         row=1, col=1)
        scored = [c for c in curve if c.get("accuracy") is not None]
        figure.add_trace(go.Scatter(x=[c["step"] for c in scored], y=[c["accuracy"] for c in scored],
                                    showlegend=False, **common), row=1, col=2)
        traces_label += [row["label"], row["label"]]
    labels = list(dict.fromkeys(traces_label))
    if len(labels) > 1:
        everything = {"visible": [True] * len(traces_label)}
        buttons = [{"label": "all models", "method": "restyle", "args": [everything]}]
        buttons += [{"label": plotly_text(label), "method": "restyle",
                     "args": [{"visible": [trace == label for trace in traces_label]}]} for label in labels]
        figure.update_layout(updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.2,
                                           "yanchor": "top", "direction": "down"}])
    figure.update_xaxes(title_text="step")
    figure.update_yaxes(type="log", dtick="D2", title_text="loss", col=1)  # D2: ticks at 1, 2, 5 per decade
    figure.update_yaxes(range=[-0.03, 1.05], title_text="accuracy", col=2)
    figure.update_layout(height=480, margin={"t": 90}, legend={"groupclick": "togglegroup"})
    return figure
