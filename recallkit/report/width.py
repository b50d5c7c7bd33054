"""Accuracy against model width, one panel per evaluation setting (Zoology's figure 2 layout)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from recallkit.atomic import write_whole
from recallkit.report.common import (
    FrontierPoint,
    best_first,
    error_bars,
    figure_labels,
    legend_columns,
    literal_text,
    palette,
)


def width_curves(points: list[FrontierPoint]) -> dict[str, dict[str, list[FrontierPoint]]]:
    """``{panel: {label: [point, ...]}}``: per width, in width order, the label's best point.

    The best over every point of that label and width (learning rates are already folded into the
    frontier points; other settings, such as a window sweep, are folded here): the one ``best_first``
    ranks first (the most seeds that finished, then the highest accuracy, then the smallest state). A
    point with seeds carries their mean, and the plot draws its interval.
    """
    best: dict[tuple[str, str, int], FrontierPoint] = {}
    for p in points:
        key = (p.panel, p.label, p.d_model)
        if key not in best or best_first(p) > best_first(best[key]):
            best[key] = p
    curves: dict[str, dict[str, list[FrontierPoint]]] = {}
    for (panel, label, _), point in sorted(best.items(), key=lambda item: item[0]):
        curves.setdefault(panel, {}).setdefault(label, []).append(point)
    return curves


def _trained(points: list[FrontierPoint]) -> list[FrontierPoint]:
    """The points of trained models: a pretrained model's point has no width (``d_model`` 0)."""
    return [p for p in points if p.d_model]


def has_width_axis(points: list[FrontierPoint]) -> bool:
    """Whether the sweep varied the width of trained models (then the width figure is worth drawing)."""
    return len({p.d_model for p in _trained(points)}) > 1


@literal_text
def plot_width_curves(points: list[FrontierPoint], path: str | Path) -> Path:
    """Draw accuracy (y) against d_model (x, log 2) per label, one panel per evaluation setting; a
    point with two or more seeds has an error bar, the 95% bootstrap interval of its mean."""
    path = Path(path)
    colors = palette([p.label for p in points])  # over every label, as frontier.png: the same colours
    points = _trained(points)
    curves = width_curves(points)
    panels = list(dict.fromkeys(p.panel for p in points))  # frontier order: task, then length
    widths = sorted({p.d_model for p in points})
    labels = sorted({label for panel in panels for label in curves[panel]})
    shown, width = figure_labels(labels), max(5.0, 4 * len(panels))
    ncol = legend_columns(list(shown.values()), width, 8)
    legend_height = 0.3 + 0.18 * math.ceil(len(labels) / ncol)  # inches, below the panels: never over data
    height = 3.6 + legend_height
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for label, line in curves[panel].items():
            ax.plot([p.d_model for p in line], [p.accuracy for p in line], "o-", color=colors[label],
                    label=shown[label])
            seeded = [p for p in line if p.interval is not None]
            if seeded:  # the 95% bootstrap interval of each mean over seeds
                ax.errorbar([p.d_model for p in seeded], [p.accuracy for p in seeded], fmt="none",
                            ecolor=colors[label], capsize=3, elinewidth=1,
                            yerr=error_bars(seeded))
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(panel)
        ax.set_xlabel("model width d_model")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (best lr)")
    handles = {}  # every label of every panel, once (the last panel may lack some)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(ncol, len(handles)),
               fontsize=8, frameon=False)
    any_seeded = any(p.interval is not None for p in points)
    fig.suptitle("Recall vs model width" + ("\nmean over seeds, bars: 95% interval" if any_seeded else ""),
                 fontsize=10 if any_seeded else None)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda partial: fig.savefig(partial, format="png", dpi=130))
    plt.close(fig)
    return path
