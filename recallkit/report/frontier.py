"""The recall-vs-state frontier: best learning rate per model and width, accuracy against state size."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def panel_key(row: dict[str, Any]) -> str:
    """The evaluation setting a run belongs to, e.g. ``mqar T=64``."""
    config = row["config"]
    task = config.get("eval_task") or config["task"]
    return f"{task['name']} T={task['seq_len']}"


def frontier_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (panel, label, width): the finished run with the best accuracy over learning rates.

    Diverged runs count with accuracy 0; failed and unfinished runs are left out.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] not in ("done", "diverged") or row["state_size"] is None:
            continue
        groups[(panel_key(row), row["label"], row["config"]["model"]["d_model"])].append(row)
    points = []
    for (panel, label, width), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        def accuracy(r: dict) -> float:
            return r["metrics"]["accuracy"] if r["status"] == "done" else 0.0
        best = max(group, key=accuracy)
        points.append({
            "panel": panel, "label": label, "d_model": width, "state_size": best["state_size"],
            "accuracy": accuracy(best), "lr": best["config"]["train"]["lr"], "run_id": best["run_id"],
            "num_params": best["num_params"], "wall_time": best["wall_time"], "runs": len(group),
        })
    return points


def plot_frontier(points: list[dict[str, Any]], path: str | Path, title: str = "Recall vs inference state") -> Path:
    """Draw one panel per evaluation setting: x = state size (numbers, log scale), y = accuracy."""
    path = Path(path)
    panels = sorted({p["panel"] for p in points}) or ["no finished runs"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False, sharey=True)
    labels = sorted({p["label"] for p in points})
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    for ax, panel in zip(axes[0], panels):
        for label in labels:
            line = sorted((p for p in points if p["panel"] == panel and p["label"] == label),
                          key=lambda p: p["state_size"])
            if not line:
                continue
            xs, ys = [p["state_size"] for p in line], [p["accuracy"] for p in line]
            ax.plot(xs, ys, "o-", color=colors[label], label=label)
            for p in line:
                ax.annotate(f"d={p['d_model']}", (p["state_size"], p["accuracy"]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color=colors[label])
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(panel)
        ax.set_xlabel("inference state (numbers per sequence)")
        ax.grid(alpha=0.3, which="both")
        if not points:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    axes[0][0].set_ylabel("accuracy (mean per sequence)")
    if labels:
        axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path
