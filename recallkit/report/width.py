"""Accuracy against model width, one panel per evaluation setting (Zoology's figure 2 layout)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from recallkit.report.common import FrontierPoint, palette


def width_curves(points: list[FrontierPoint]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{panel: {label: [(d_model, best accuracy), ...]}}`` sorted by width.

    The best accuracy over every point of that label and width (learning rates are already folded
    into the frontier points; other settings, such as a window sweep, are folded here).
    """
    best: dict[tuple[str, str, int], float] = {}
    for p in points:
        key = (p.panel, p.label, p.d_model)
        best[key] = max(best.get(key, 0.0), p.accuracy)
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for (panel, label, width), accuracy in sorted(best.items()):
        curves.setdefault(panel, {}).setdefault(label, []).append((width, accuracy))
    return curves


def _trained(points: list[FrontierPoint]) -> list[FrontierPoint]:
    """The points of trained models: a pretrained model's point has no width (``d_model`` 0)."""
    return [p for p in points if p.d_model]


def has_width_axis(points: list[FrontierPoint]) -> bool:
    """Whether the sweep varied the width of trained models (then the width figure is worth drawing)."""
    return len({p.d_model for p in _trained(points)}) > 1


def plot_width_curves(points: list[FrontierPoint], path: str | Path) -> Path:
    """Draw accuracy (y) against d_model (x, log 2) per label, one panel per evaluation setting."""
    path = Path(path)
    points = _trained(points)
    curves = width_curves(points)
    panels = list(dict.fromkeys(p.panel for p in points))  # frontier order: task, then length
    colors = palette([p.label for p in points])
    widths = sorted({p.d_model for p in points})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        for label, line in curves[panel].items():
            ax.plot(*zip(*line), "o-", color=colors[label], label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(panel)
        ax.set_xlabel("model width d_model")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (best lr)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle("Recall vs model width")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
