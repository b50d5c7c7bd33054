"""The capability map: each model family's accuracy on each task setting of a sweep (a suite of
tasks), as a heatmap and a table whose rows are ordered by inference state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from recallkit.atomic import write_whole
from recallkit.report.common import FrontierPoint, base_panel, best_first, figure_labels, literal_text


@dataclass(frozen=True)
class CapabilityMap:
    """``accuracy[i][j]``: family ``labels[i]``'s accuracy in panel ``panels[j]`` (its best point over
    widths and model settings, see ``capability_map``: the mean over seeds; None when it was not
    evaluated there), ``state[i][j]`` the state size of that point and ``interval[i][j]`` its 95%
    bootstrap interval over seeds (None with one seed). Rows are ordered by the family's largest
    state, smallest first."""

    labels: list[str]
    panels: list[str]
    accuracy: list[list[float | None]]
    state: list[list[int | None]]
    interval: list[list[tuple[float, float] | None]]


def capability_map(points: list[FrontierPoint]) -> CapabilityMap:
    """The map of ``points`` without eviction (an eviction policy is a point on the frontier, not a
    family here). A cell is the family's point that ``best_first`` ranks first: the most seeds that
    finished, then the highest accuracy, then the smallest state."""
    points = [p for p in points if base_panel(p.panel) is None and not p.budget]
    panels = list(dict.fromkeys(p.panel for p in points))
    best: dict[tuple[str, str], FrontierPoint] = {}
    for p in points:
        held = best.get((p.label, p.panel))
        if held is None or best_first(p) > best_first(held):
            best[(p.label, p.panel)] = p
    largest = {p.label: max(q.state_size for q in points if q.label == p.label) for p in points}
    labels = sorted(largest, key=lambda label: (largest[label], label))
    cells = [[best.get((label, panel)) for panel in panels] for label in labels]
    return CapabilityMap(labels, panels, [[c and c.accuracy for c in row] for row in cells],
                         [[c and c.state_size for c in row] for row in cells],
                         [[c and c.interval for c in row] for row in cells])


def has_capability_axis(points: list[FrontierPoint]) -> bool:
    """Whether the map is worth drawing: two or more families meet on two or more task settings (a
    setting only one family ran compares nothing)."""
    grid = capability_map(points)
    met = [j for j in range(len(grid.panels)) if sum(row[j] is not None for row in grid.accuracy) > 1]
    return len(met) > 1


def _compact(n: int) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


@literal_text
def plot_capability_map(points: list[FrontierPoint], path: str | Path) -> Path:
    """Heatmap: a row per family (its largest state in the label), a column per task setting, each cell
    its accuracy (with seeds: the mean and, below it, the 95% interval) and the state it took; grey
    where the family was not evaluated."""
    grid, path = capability_map(points), Path(path)
    values = [[float("nan") if a is None else a for a in row] for row in grid.accuracy]
    row_height = 0.5 if all(i is None for row in grid.interval for i in row) else 0.65  # 3 lines a cell
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * len(grid.panels), 1.2 + row_height * len(grid.labels)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(grid.accuracy):
        for j, accuracy in enumerate(row):
            if accuracy is not None:
                interval = grid.interval[i][j]
                spread = "" if interval is None else f"\n[{interval[0]:.2f}, {interval[1]:.2f}]"
                ax.text(j, i, f"{accuracy:.2f}{spread}\n{_compact(grid.state[i][j])}", ha="center",
                        va="center", fontsize=7 if interval is None else 6,
                        color="black" if accuracy > 0.6 else "white")
    ax.set_yticks(range(len(grid.labels)), _row_names(grid, figure_labels(grid.labels)))
    ax.set_xticks(range(len(grid.panels)), grid.panels, rotation=30, ha="right")
    ax.set_title("Capability map: accuracy (state) per task", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="accuracy")
    _fit_tick_labels(fig, ax, cells_width=1.3 * len(grid.panels), cells_height=row_height * len(grid.labels))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda partial: fig.savefig(partial, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)
    return path


def _fit_tick_labels(fig: plt.Figure, ax: plt.Axes, cells_width: float, cells_height: float) -> None:
    """Grow the figure by the tick labels' measured extent, so that long family or task names take
    room of their own instead of narrowing the cells under their text (sizes in inches)."""
    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi

    def extent(labels: list[plt.Text], side: str) -> float:
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        return max((getattr(b, side) for b in boxes), default=0.0) / dpi

    fig.set_size_inches(1.6 + extent(ax.get_yticklabels(), "width") + cells_width,
                        1.0 + extent(ax.get_xticklabels(), "height") + cells_height)


def _row_names(grid: CapabilityMap, shown: dict[str, str] | None = None) -> list[str]:
    """``"mamba2 (66k)"``: each family (as ``shown`` writes it, else whole) with its largest state."""
    return [f"{(shown or {}).get(label, label)} ({_compact(max(s for s in row if s is not None))})"
            for label, row in zip(grid.labels, grid.state, strict=True)]


def capability_table(points: list[FrontierPoint]) -> tuple[list[str], list[list[str]]]:
    """The map as table headers and rows: ``"0.930 (66k)"`` per cell, with seeds the mean and its 95%
    interval ``"0.930 [0.900, 0.960] (66k)"``; empty where not evaluated."""
    grid = capability_map(points)
    rows = [[name, *(_cell(a, s, i) for a, s, i in zip(accs, states, intervals, strict=True))]
            for name, accs, states, intervals
            in zip(_row_names(grid), grid.accuracy, grid.state, grid.interval, strict=True)]
    return ["model (largest state)", *grid.panels], rows


def _cell(accuracy: float | None, state: int | None, interval: tuple[float, float] | None) -> str:
    if accuracy is None:
        return ""
    spread = "" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    return f"{accuracy:.3f}{spread} ({_compact(state)})"
