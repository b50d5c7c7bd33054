"""Plotly figures as fragments of one offline HTML page (their family colours: ``common.family_colors``)."""

from __future__ import annotations

from functools import cache

import plotly.graph_objects as go
import plotly.offline

CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"},
          "showSendToCloud": False, "plotlyServerURL": ""}
"""Plotly's mode bar without the logo link and without the bundled plotly.js's default "share chart"
button, which would post the figure (every run's config in its hovers) to cloud.plotly.com; its
camera button saves SVG (vector, for papers)."""

LAYOUT = {
    "template": "plotly_white",
    "font": {"family": "system-ui, sans-serif", "size": 12},
    "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
    "hoverlabel": {"align": "left", "font": {"size": 11}},
}
"""Layout shared by every figure of the report."""


@cache
def plotly_js() -> str:
    """The plotly.js bundle shipped with the python package (embedded once per page, ~4.8 MB)."""
    return plotly.offline.get_plotlyjs()


def figure_div(figure: go.Figure, div_id: str) -> str:
    """The figure as a ``<div>`` and the script that draws it; plotly.js must be loaded before it.

    A fixed ``div_id`` keeps the page deterministic and lets tests and links find the figure. The
    shared ``LAYOUT`` goes under the figure's own layout, which wins where both set a property.
    """
    own = figure.layout.to_plotly_json()
    own.pop("template", None)  # plotly bakes its default template into every new figure
    figure.update_layout(LAYOUT)
    figure.update_layout(own)
    return figure.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, config=CONFIG,
                          default_width="100%")
