"""The interactive length-generalisation figure: accuracy against length per model (plotly), from
the same curves as the PNG (``recallkit.report.length_curves``)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from recallkit.report.common import FrontierPoint, family_colors, plotly_text
from recallkit.report.length_curves import length_curves

COLUMNS = 3


def length_figure(rows: list[dict[str, Any]], points: list[FrontierPoint] | None = None) -> go.Figure | None:
    """One subplot per training setting: x = length, y = exact match, one trace per model and width;
    the training range shaded; a fixed-state model's information bound in its hover and legend.
    Returns None when no run was evaluated per length. ``points`` is unused (same call as the other
    figures)."""
    curves = length_curves(rows)
    if not curves:
        return None
    panels = list(dict.fromkeys(c["panel"] for c in curves))
    cols = min(COLUMNS, len(panels))
    figure = make_subplots(rows=-(-len(panels) // cols), cols=cols, shared_yaxes=True,
                           subplot_titles=[plotly_text(p) for p in panels])
    colors = family_colors([c["label"] for c in curves])
    shown: set[str] = set()
    for i, panel in enumerate(panels):
        row, col = i // cols + 1, i % cols + 1
        lines = [c for c in curves if c["panel"] == panel]
        for lo, hi in {tuple(c["train_range"]) for c in lines if c["train_range"]}:
            figure.add_vrect(x0=lo - 0.5, x1=hi + 0.5, fillcolor="lightgray", opacity=0.4, line_width=0,
                             row=row, col=col, exclude_empty_subplots=False)  # drawn before the traces
        for c in lines:
            name = f"{plotly_text(c['label'])} d={c['d_model']}"
            bound = "" if c["bound"] is None else f"<br>information bound L* = {c['bound']:,.0f} {c['unit']}"
            lengths, accuracies, states = zip(*c["points"])
            seeds, error = [""] * len(lengths), None
            if c["interval"]:  # the mean over seeds: its 95% interval as error bars, every seed in the hover
                name += f" ({len(c['seeds'][0])} seeds)"
                seeds = ["<br>seeds: " + ", ".join(f"{v:.3f}" for v in values) for values in c["seeds"]]
                error = {"type": "data", "symmetric": False,
                         "array": [max(0.0, high - a) for a, (_, high) in zip(accuracies, c["interval"])],
                         "arrayminus": [max(0.0, a - low) for a, (low, _) in zip(accuracies, c["interval"])]}
            figure.add_trace(go.Scatter(
                x=lengths, y=accuracies, mode="lines+markers", name=name, legendgroup=name,
                showlegend=name not in shown, line={"color": colors[c["label"]]}, error_y=error,
                customdata=list(zip(states, seeds)),
                hovertemplate=(f"<b>{name}</b> lr {c['lr']:g}<br>length %{{x}}: exact match %{{y:.3f}}"
                               f"%{{customdata[1]}}<br>state %{{customdata[0]:,}} numbers{bound}"
                               "<extra></extra>"),
            ), row=row, col=col)
            shown.add(name)
        figure.update_xaxes(title_text=f"length ({lines[0]['unit']})", row=row, col=col)
    figure.update_yaxes(range=[-0.03, 1.05], title_text="exact match", col=1)
    figure.update_layout(height=380 * -(-len(panels) // cols), margin={"t": 40})
    return figure
