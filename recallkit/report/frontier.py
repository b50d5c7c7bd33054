"""The recall-vs-state frontier: best learning rate per model and width, accuracy against state size."""

from __future__ import annotations

import json
import math
import textwrap
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from recallkit.atomic import write_whole
from recallkit.report.common import (
    FrontierPoint,
    base_panel,
    error_bars,
    figure_labels,
    legend_columns,
    literal_text,
    setting_rank,
    off_log_axis,
    palette,
    panel_name,
    run_seed,
    run_setting,
    tag_fields,
    varying_settings,
)
from recallkit.report.stats import bootstrap_interval, seed_mean


def _compact(value: float, _position: int) -> str:
    """Tick label: 500, 2k, 1M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def evaluations(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A finished run's evaluations: ``{"panel", "state_size", "accuracy"}`` per eval task.

    The panel is ``panel_name`` (read-twice runs share the panel of the task they read). Diverged
    runs count with accuracy 0. An evaluation under a KV-cache eviction policy has the ``series``
    " [policy]" appended to the run's label, and its ``budget``; one read otherwise than the headline
    (a run evaluated on a task and on its read-twice form) " [read twice]" or " [read once]", as both
    share a panel. Evaluations at other lengths (``RunConfig.eval_lengths``) are left out:
    ``recallkit.report.length_curves`` draws them.
    """
    metrics = row["metrics"] or {}
    evals = metrics.get("evals") or [
        {"task": row["config"]["task"]["name"], "seq_len": row["config"]["task"]["seq_len"],
         "state_size": row["state_size"], "accuracy": metrics.get("accuracy", 0.0)}
    ]
    twice = evals[0]["task"] == "read_twice"
    tasks = _evaluated_tasks(row["config"], evals)

    def series(e: dict[str, Any]) -> str:
        reads = "" if (e["task"] == "read_twice") == twice else " [read once]" if twice else " [read twice]"
        return reads + (f" [{e['policy']}]" if e.get("policy") else "")

    return [
        {"panel": panel_name(e), "task": e["task"], "seq_len": e["seq_len"],
         "state_size": e["state_size"], "accuracy": e["accuracy"] if row["status"] == "done" else 0.0,
         "series": series(e), "budget": e.get("budget"),
         "policy": e.get("policy_config"), "prefill_tokens": e.get("prefill_tokens"),
         "index": index, "evaluated": task}
        for index, (e, task) in enumerate(zip(evals, tasks))
        if "length" not in e  # length-generalisation evals have their own plot
    ]


def _evaluated_tasks(config: dict[str, Any], evals: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Per stored evaluation, the task config it scored: the run's test tasks in order (``eval_tasks``,
    else its training task), then the headline for its other lengths and eviction policies."""
    tests = config.get("eval_tasks") or [config.get("task")]
    return [tests[i] if i < len(tests) else tests[0] for i in range(len(evals))]


def _scored_task_key(config: dict[str, Any], task: dict[str, Any] | None) -> str:
    """What an evaluation scored, ``task``, as part of its point's identity: two runs, or two
    evaluations of one run (``eval_tasks`` with MQAR at 2 and at 4 pairs, one panel), whose tasks
    differ measure different things, so they are two points of their line and never one best of them.
    A run evaluated on other tasks trained on a setting like its lr, and is never one point with a run
    evaluated on the task it trained on."""
    own = "eval_tasks" if config.get("eval_tasks") else "trained"
    return own + json.dumps(task, sort_keys=True)


def frontier_points(rows: list[dict[str, Any]]) -> list[FrontierPoint]:
    """One point per (panel, label, model): the best training setting's mean accuracy over its seeds.

    A panel is one evaluation setting (task and length); a run evaluated at several lengths gives a point in
    each. Models differ by width or by any mixer setting (a state-size sweep of one family gives one point per
    setting), and so do the tasks their evaluations scored, kept apart from a run scored on the task it
    trained on (:func:`_scored_task_key`); evaluations under an eviction policy form their own label, one
    point per budget. Within a point, runs that differ only by seed are averaged, and the setting (learning
    rate, steps, a training task evaluated elsewhere, an eviction policy's options, ...: anything but the
    seed, :func:`~recallkit.report.common.run_setting`) with the most seeds that finished, then the best mean,
    wins (:func:`~recallkit.report.common.setting_rank`: one lucky seed of a setting whose other seeds failed
    does not beat a mean over three, nor do seeds that all diverged); runs of two settings are never averaged
    as seeds. With two or more seeds the point carries every seed's accuracy and a 95% bootstrap interval of
    the mean (:mod:`recallkit.report.stats`). Failed and unfinished runs are left out, and so are runs that
    halving stopped early (their accuracy is that of a shorter run) and evaluations that scored no sequence
    (accuracy NaN).
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for row in rows:
        if row["status"] not in ("done", "diverged") or row["state_size"] is None:
            continue
        for evaluation in evaluations(row):
            model = json.dumps(row["config"]["model"], sort_keys=True)
            label = row["label"] + evaluation["series"]
            key = (evaluation["task"], evaluation["seq_len"], evaluation["panel"], label,
                   row["config"]["model"].get("d_model", 0), model, json.dumps(evaluation["budget"]),
                   _scored_task_key(row["config"], evaluation["evaluated"]))
            groups[key].append((row, evaluation))
    points = []
    for (_, _, _, label, width, _, _, _), group in sorted(groups.items()):
        settings: dict[str, dict[int, tuple[dict, dict]]] = defaultdict(dict)
        for row, evaluation in group:  # one setting and seed is one run (its config is its identity)
            if math.isnan(evaluation["accuracy"]) or "halted" in (row["metrics"] or {}):
                continue
            setting = run_setting(row["config"]) + json.dumps(evaluation["policy"], sort_keys=True)
            settings[setting].setdefault(run_seed(row["config"]), (row, evaluation))
        if not settings:
            continue
        seeds = max(settings.values(), key=lambda runs: setting_rank(
            [(r["status"] == "done", e["accuracy"]) for r, e in runs.values()]))
        ordered = [seeds[seed] for seed in sorted(seeds)]
        row, best = max(ordered, key=lambda pair: pair[1]["accuracy"])  # the run the point links to
        accuracies = [e["accuracy"] for _, e in ordered]
        points.append(FrontierPoint(
            panel=best["panel"], label=label, d_model=width,
            state_size=round(mean(e["state_size"] for _, e in ordered)), accuracy=seed_mean(accuracies),
            budget=best["budget"], prefill_tokens=best["prefill_tokens"],
            lr=row["config"].get("train", {}).get("lr"), run_id=row["run_id"], num_params=row["num_params"],
            wall_time=row["wall_time"], runs=len({r["run_id"] for r, _ in group}),
            model=row["config"]["model"],
            seeds=tuple(accuracies) if len(accuracies) > 1 else (),
            interval=bootstrap_interval(accuracies),
            seed_runs=tuple((seed, seeds[seed][0]["run_id"]) for seed in sorted(seeds)),
            policy=best["policy"], task=best["evaluated"], evaluation=best["index"],
            eval_tasks=bool(row["config"].get("eval_tasks")),
            diverged=sum(r["status"] == "diverged" for r, _ in ordered),
        ))
    return points


Tag = tuple[float, float, str, Any]
"""A point's tag: x, y, text, colour."""
TAG_OFFSETS = [(dx, dy) for dy in (-10, 4, -20, 14, -30, 24, -40, 34) for dx in (4, -4)]
"""Candidate offsets (points) of a point's tag from the point, tried in order."""


def _place_tags(ax: plt.Axes, tags: list[Tag]) -> None:
    """Annotate each point with its tag at the first offset whose text box lies between the axes'
    sides (past them it is cut off) and overlaps no tag placed before it, so a dense family stays
    readable; a tag with no free offset is left out (the HTML report's hover names every point)."""
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []
    for x, y, tag, color in tags:
        for dx, dy in TAG_OFFSETS:
            text = ax.annotate(tag, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                               color=color, ha="left" if dx > 0 else "right")
            box = text.get_window_extent(renderer)
            within = inside.x0 <= box.x0 and box.x1 <= inside.x1  # past the side: under the next panel
            if within and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            text.remove()


COLUMNS = 3
"""Panels per row of the PNG, as in the interactive figure."""
TITLE_WIDTH = 48
"""Characters per line of a panel's title (a text task's setting is long)."""
MAX_LINES = 8
"""Lines one panel draws in colour; a setting with more lines is split over several panels."""


def _line_groups(labels: list[str]) -> list[list[str]]:
    """``labels`` in sorted order, cut into the fewest groups of at most ``MAX_LINES``, sizes within one
    of each other (25 families: 7, 6, 6, 6)."""
    count = math.ceil(len(labels) / MAX_LINES) or 1
    size, extra = divmod(len(labels), count)
    starts = [i * size + min(i, extra) for i in range(count + 1)]
    return [labels[a:b] for a, b in zip(starts, starts[1:])]


def _draw_panel(ax: plt.Axes, points: list[FrontierPoint], panel: str, group: list[str], context: list[str],
                colors: dict[str, Any]) -> tuple[dict[str, tuple[Any, bool]], list[Tag]]:
    """Draw ``group``'s lines of ``panel`` in colour (error bars over seeds, tags for the settings that
    vary along a line) and ``context``'s lines, the rest of the panel's families, thin and grey.
    Returns each coloured line with whether it is faint (an eviction panel's reference), and the tags
    to place once the layout is fixed."""
    handles: dict[str, tuple[Any, bool]] = {}
    tags: list[Tag] = []
    unplotted: list[str] = []
    reference = base_panel(panel)  # an eviction panel repeats the models without eviction
    for label in context + group:
        line = sorted((p for p in points if p.panel in (panel, reference) and p.label == label),
                      key=lambda p: p.state_size)
        if not line:
            continue
        note = off_log_axis(line) if label in group else ""
        if note:
            unplotted.append(note)
        xs, ys = [p.state_size for p in line], [p.accuracy for p in line]
        if label in context:
            ax.plot(xs, ys, "-", color="0.75", linewidth=0.8, zorder=1)
            continue
        faint = reference is not None and line[0].panel == reference
        (drawn,) = ax.plot(xs, ys, "s--" if faint else "o-", color=colors[label], label=label,
                           alpha=0.45 if faint else 1, zorder=2)
        handles[label] = (drawn, faint)
        seeded = [p for p in line if p.interval is not None]
        if seeded:  # the 95% bootstrap interval of each mean over seeds
            ax.errorbar([p.state_size for p in seeded], [p.accuracy for p in seeded],
                        yerr=error_bars(seeded), fmt="none", ecolor=colors[label], elinewidth=1, capsize=3,
                        alpha=0.45 if faint else 1, zorder=2)
        tags.extend((p.state_size, p.accuracy, tag, colors[label])
                    for p, tag in zip(line, varying_settings([tag_fields(p) for p in line])) if tag)
    if unplotted:  # matplotlib drops x <= 0 from a log axis without a word
        ax.text(0.98, 0.02, "\n".join(textwrap.wrap("not on the log axis: " + "; ".join(unplotted), 50)),
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
    return handles, tags


@literal_text
def plot_frontier(points: list[FrontierPoint], path: str | Path,
                  title: str = "Recall vs inference state") -> Path:
    """Draw one panel per evaluation setting: x = state size (numbers, log scale), y = accuracy.

    Panels fill rows of at most ``COLUMNS``; a family has one colour in every panel. A setting with
    more than ``MAX_LINES`` lines is split over several panels of the same axes, each drawing its share
    in colour over the others in grey, and then every panel has a legend of its own; otherwise one
    legend below the panels names every line. Point tags (the settings that vary within a line) are
    placed after the layout is fixed, so the overlap check sees their final positions.
    """
    path = Path(path)
    settings = list(dict.fromkeys(p.panel for p in points)) or ["no finished runs"]
    labels = sorted({p.label for p in points})
    colors, shown = palette(labels), figure_labels(labels)
    panels: list[tuple[str, str, list[str], list[str]]] = []  # (setting, title, coloured, grey labels)
    for panel in settings:
        drawn = sorted({p.label for p in points if p.panel in (panel, base_panel(panel))})
        groups = _line_groups(drawn)
        for i, group in enumerate(groups):
            name = panel if len(groups) == 1 else f"{panel} ({i + 1}/{len(groups)})"
            panels.append((panel, name, group, [label for label in drawn if label not in group]))
    split = len(panels) > len(settings)
    columns = min(COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    width = max(7.0, 5.2 * columns)
    ncol = legend_columns(list(shown.values()), width, 7)
    legend_rows = 0 if split else math.ceil(len(labels) / ncol)
    legend_height = 0.3 + 0.18 * legend_rows  # inches
    height = 4.4 * rows + legend_height
    fig, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False, sharey=True)
    handles: dict[str, Any] = {}
    tags_per_axis = []
    for ax, (panel, name, group, context) in zip(axes.flat, panels):
        drawn, tags = _draw_panel(ax, points, panel, group, context, colors)
        for label, (line, faint) in drawn.items():
            line.set_label(shown[label])
            if label not in handles or not faint:
                handles[label] = line
        tags_per_axis.append(tags)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_compact))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.03, 1.05)
        ax.set_title("\n".join(textwrap.wrap(name, TITLE_WIDTH)), fontsize=9)
        ax.set_xlabel("inference state (numbers per sequence)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        if split and drawn:
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
        if not points:
            ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (mean per sequence)")
    if handles and not split:
        fig.legend(list(handles.values()), [shown[label] for label in handles], loc="lower center",
                   ncol=min(ncol, len(handles)), fontsize=7, frameon=False)
    seeded = any(p.interval for p in points)
    fig.suptitle(title + ("\nmean over seeds, bars: 95% bootstrap interval" if seeded else ""))
    top = (0.55 if seeded else 0.35) / height
    fig.tight_layout(rect=(0, legend_height / height, 1, 1 - top))  # room for the suptitle
    for ax, tags in zip(axes.flat, tags_per_axis):
        _place_tags(ax, tags)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, lambda partial: fig.savefig(partial, format="png", dpi=130, bbox_inches="tight"))
    plt.close(fig)
    return path
