"""Length generalisation: accuracy against length per model, training range shaded, information bound.

A run with ``eval_lengths`` carries one evaluation per length (each with a ``length`` key); with
the ``length`` slice of its other evaluations they give one curve per model. For models whose
state does not grow with the length (recurrent), the curve is marked where the answer's
information ``L * bits_per_unit`` exceeds the state's ``state_size * 32`` bits (float32): no such
model can be exact beyond it (Jelassi et al. 2024, arXiv 2402.01032). Training stores each length
evaluation's ``bits_per_unit`` and ``length_unit``, so the report reads them without rebuilding the
task; runs stored before that get no bound line and the unit "length".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from recallkit.atomic import write_whole
from recallkit.report.common import (
    figure_labels,
    legend_columns,
    literal_text,
    palette,
    run_seed,
    run_setting,
    setting_rank,
)
from recallkit.report.stats import bootstrap_interval, seed_mean

BITS_PER_NUMBER = 32
"""State numbers are float32."""


def _metric(scores: dict[str, Any]) -> float:
    """Whole-answer accuracy (string-level for copy) when the task reports it, else per-sequence."""
    return scores.get("exact_match", scores["accuracy"])


def _setting(evaluation: dict[str, Any]) -> str:
    return evaluation.get("setting", evaluation["task"])


def length_curve(row: dict[str, Any]) -> dict[str, Any] | None:
    """One run's curve ``{"panel", "label", "d_model", "lr", "points": [(L, accuracy, state_size)],
    "train_range", "fixed_state", "bound", "unit", "headline", "diverged"}``, or None when the run
    has no length evaluations. A diverged run scores 0 at every length, as on the frontier. Only the
    headline's setting counts: an ``eval_tasks`` evaluation of another task has lengths of its own."""
    metrics = row["metrics"] or {}
    evals = [e for e in metrics.get("evals") or [] if not e.get("policy")]
    if row["status"] not in ("done", "diverged") or not any("length" in e for e in evals):
        return None
    if "halted" in metrics:  # halving stopped it: the accuracy of a shorter run, not a seed (as the frontier)
        return None
    panel = _setting(evals[0])
    evals = [e for e in evals if _setting(e) == panel]
    by_length: dict[int, tuple[float, int]] = {}
    for e in evals:
        for length, scores in (e.get("slices") or {}).get("length", {}).items():
            by_length.setdefault(int(length), (_metric(scores), e["state_size"]))
        if "length" in e:  # a dedicated evaluation at this length wins over a slice of a mixed one
            by_length[e["length"]] = (_metric(e), e["state_size"])
    diverged = row["status"] == "diverged"
    points = [(length, 0.0 if diverged else accuracy, state)
              for length, (accuracy, state) in sorted(by_length.items())]
    at_length = sorted((e["length"], e["state_size"]) for e in evals if "length" in e)
    fixed_state = len({state for _, state in at_length}) == 1 and len(at_length) > 1
    axis = next(e for e in evals if "length" in e)  # every length evaluation stores the same axis
    bound = None
    if fixed_state and axis.get("bits_per_unit"):
        bound = at_length[0][1] * BITS_PER_NUMBER / axis["bits_per_unit"]
    return {
        "panel": panel, "label": row["label"],
        "d_model": row["config"]["model"].get("d_model", 0), "lr": row["config"].get("train", {}).get("lr"),
        "points": points,
        "train_range": metrics.get("train_length_range"), "fixed_state": fixed_state, "bound": bound,
        "unit": axis.get("length_unit", "length"),
        "headline": 0.0 if diverged else metrics.get("accuracy", 0.0), "diverged": diverged,
    }


def length_curves(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per panel, model (its whole config, as the frontier) and width, the curve of its best setting
    (learning rate, steps, ..., anything but the seed: ``run_setting``; chosen as the frontier
    chooses, ``setting_rank`` of the headline accuracies: the most seeds that finished, then the best
    mean), averaged over the seeds (diverged ones at 0): ``points`` hold
    the mean exact match at each length every seed was scored at, ``seeds`` each seed's values there
    and ``interval`` a 95% bootstrap interval of each mean (empty with one seed)."""
    settings: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for row in rows:
        curve = length_curve(row)
        if curve is None:
            continue
        model = json.dumps(row["config"]["model"], sort_keys=True)
        seeds = settings.setdefault((curve["panel"], curve["label"], curve["d_model"], model), {}).setdefault(
            run_setting(row["config"]), {})
        seeds.setdefault(run_seed(row["config"]), curve)  # one setting and seed is one run
    return [_over_seeds(max(settings[key].values(), key=_rank)) for key in sorted(settings)]


def _rank(by_seed: dict[int, dict[str, Any]]) -> tuple[int, float]:
    return setting_rank([(not curve["diverged"], curve["headline"]) for curve in by_seed.values()])


def _over_seeds(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One curve from the same run at several seeds (one seed: that curve, ``interval`` empty)."""
    curves = [by_seed[seed] for seed in sorted(by_seed)]
    scored = [dict((length, (accuracy, state)) for length, accuracy, state in c["points"]) for c in curves]
    lengths = sorted(set.intersection(*(set(s) for s in scored)))
    per_seed = [[s[length][0] for s in scored] for length in lengths]
    # a seed whose evaluation scored no sequence (NaN) is no measurement: left out of mean and interval
    finite = [[value for value in values if not math.isnan(value)] for values in per_seed]
    points = [(length, seed_mean(values) if values else math.nan, scored[0][length][1])
              for length, values in zip(lengths, finite)]
    intervals = ([bootstrap_interval(values) or (math.nan, math.nan) for values in finite]  # NaN: no band
                 if len(curves) > 1 else [])
    return {**curves[0], "points": points, "headline": mean(c["headline"] for c in curves),
            "seeds": per_seed if len(curves) > 1 else [], "interval": intervals}


@literal_text
def plot_length_curves(curves: list[dict[str, Any]], path: str | Path) -> Path:
    """Draw accuracy (y) against length (x) per model, one panel per training setting; shade the
    training range; a dotted line where a fixed-state model's information bound falls in range."""
    path = Path(path)
    panels = list(dict.fromkeys(c["panel"] for c in curves))
    colors = palette([(c["label"], c["d_model"]) for c in curves])
    shown = figure_labels(sorted({c["label"] for c in curves}))
    width = max(8.0, 5.2 * len(panels))  # one panel of many curves needs the room
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.4), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels):
        lines = [c for c in curves if c["panel"] == panel]
        shaded = {tuple(c["train_range"]) for c in lines if c["train_range"]}
        for lo, hi in shaded:
            ax.axvspan(lo - 0.5, hi + 0.5, color="0.85", zorder=0, label="training lengths")
        longest = max(length for c in lines for length, _, _ in c["points"])
        for c in lines:
            color = colors[(c["label"], c["d_model"])]
            name = f"{shown[c['label']]} d={c['d_model']}"
            if c["bound"] is not None:
                name += f" (bound L*={c['bound']:,.0f})"
                if c["bound"] <= longest:
                    ax.axvline(c["bound"], color=color, linestyle=":", linewidth=1)
            xs, ys, _ = zip(*c["points"])
            if c["interval"]:
                name += f" ({len(c['seeds'][0])} seeds, 95% interval)"
                ax.fill_between(xs, *zip(*c["interval"]), color=color, alpha=0.15, linewidth=0)
            ax.plot(xs, ys, "o-", color=color, label=name, markersize=3)
        ax.set_ylim(-0.03, 1.05)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(f"length ({lines[0]['unit']})")
        ax.grid(alpha=0.3)
        names = ax.get_legend_handles_labels()[1]  # two columns under a panel while they fit its width
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False,
                  ncol=min(2, legend_columns(names, width / len(panels), 7)))
    axes[0][0].set_ylabel("exact match (whole answer)")
    fig.suptitle("Length generalisation (bound: L * bits per unit = state numbers * 32 bits)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda partial: fig.savefig(partial, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)
    return path
