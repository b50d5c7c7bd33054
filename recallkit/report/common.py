"""What the report's figures and tables share: panel names, family colours, flattened settings and the
typed frontier point. One place, so that a panel or a family looks the same in every figure."""

from __future__ import annotations

import functools
import html
import json
import unicodedata
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from statistics import mean
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
from matplotlib import colormaps
from matplotlib.colors import to_hex

Plot = TypeVar("Plot", bound=Callable[..., Any])


def literal_text(plot: Plot) -> Plot:
    """Draw ``plot``'s labels as written: ``$...$`` in a label is text, not mathtext (an unknown
    symbol there failed the whole report), and a character the font lacks draws as a box without a
    warning per glyph."""
    @functools.wraps(plot)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context({"text.parse_math": False}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
            return plot(*args, **kwargs)
    return drawn  # type: ignore[return-value]


EVICTION = ", KV eviction"
"""Marks the panels of evaluations under an eviction policy."""


def panel_name(evaluation: dict[str, Any]) -> str:
    """The panel of a stored evaluation: its task's ``setting`` (``"<task> T=<n>"`` for runs stored
    before settings were), with ``", KV eviction (<mode>)"`` appended under an eviction policy, so
    that evicting runs get their own panel beside the models they are compared with."""
    panel = evaluation.get("setting", f"{evaluation['task']} T={evaluation['seq_len']}")
    return panel + (f"{EVICTION} ({evaluation['mode']})" if evaluation.get("policy") else "")


def base_panel(panel: str) -> str | None:
    """The panel without eviction that an eviction panel repeats faintly for reference, else None."""
    return panel.split(EVICTION)[0] if EVICTION in panel else None


LABEL_CHARS = 48
"""Characters of a label as a PNG shows it (legends, row names): a longer one squeezed the panels
off the figure. The page's tables and hovers show every label whole."""


def text_width(text: str) -> int:
    """Columns ``text`` takes: two for an East Asian wide or full-width character, one otherwise."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cut(text: str, width: int) -> str:
    """The start and the end of ``text`` around "…", ``width`` columns in all."""
    head, tail, room = "", "", width - 1
    for c in text:  # the start takes half the room
        if text_width(head + c) > room // 2:
            break
        head += c
    for c in reversed(text):
        if text_width(head + c + tail) > room:
            break
        tail = c + tail
    return head + "…" + tail


def figure_labels(labels: list[str], width: int = LABEL_CHARS) -> dict[str, str]:
    """Each label as a PNG writes it: whole up to ``width`` columns (:func:`text_width`), else its
    start and its end around "…" (the end tells variants apart: "... (RoPE)", "... [h2o]"); a cut
    label that would read as another gets " (2)", " (3)", ... in the order given."""
    whole = {label: label for label in dict.fromkeys(labels) if text_width(label) <= width}
    taken = set(whole)
    shown: dict[str, str] = {}
    for label in dict.fromkeys(labels):
        if label in whole:
            shown[label] = label
            continue
        text = unique = _cut(label, width)
        n = 2
        while unique in taken:
            unique, n = f"{text} ({n})", n + 1
        taken.add(unique)
        shown[label] = unique
    return shown


def legend_columns(texts: list[str], figure_width: float, fontsize: float) -> int:
    """Columns of a legend under the panels: up to 3, no more than fit ``figure_width`` inches (a
    column of text is about 0.6 em wide, :func:`text_width`; the marker and the gap take about half
    an inch)."""
    column = (max(map(text_width, texts), default=1) * 0.6 * fontsize + 40) / 72
    return max(1, min(3, len(texts), int(figure_width // column)))


def plotly_text(text: str) -> str:
    """``text`` as plotly shows it literally: plotly reads ``<b>``, ``<i>``, ``<a>`` ... and entities in
    names, titles and hovers, so a label such as ``ours <i>v2</i>`` would be typeset."""
    return html.escape(text, quote=False)


def palette(keys: list[Any]) -> dict[Any, tuple[float, float, float, float]]:
    """An RGBA colour per key in sorted order: tab10, tab20 beyond ten keys, then tab20b and tab20c
    beyond twenty (distinct colours up to 60 keys, repeating after; the same order everywhere gives
    a family the same colour in every figure)."""
    ordered = sorted(set(keys))
    if len(ordered) <= 20:
        colors = list(colormaps["tab10" if len(ordered) <= 10 else "tab20"].colors)
    else:  # tab20b and tab20c hold 5 hues x 4 shades: take one shade of every hue, then the next
        colors = list(colormaps["tab20"].colors) + [
            colormaps[name].colors[hue * 4 + shade] for name in ("tab20b", "tab20c")
            for shade in range(4) for hue in range(5)]
    return {key: (*colors[i % len(colors)][:3], 1.0) for i, key in enumerate(ordered)}


def family_colors(labels: list[str]) -> dict[str, str]:
    """``palette`` as hex strings, for the plotly figures of the page."""
    return {label: to_hex(color) for label, color in palette(labels).items()}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists as ``{"mixer.1.window": 16, ...}``."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def varying_settings(models: list[dict[str, Any]], omit: tuple[str, ...] = ()) -> list[str]:
    """Per model config, the settings that differ among ``models``, e.g. ``"window=8 feature_dim=4"``.

    A setting is named by the shortest end of its path that no other differing setting shares
    (``0.window=8 1.window=16`` for a hybrid's two windows). One that repeats another of its name at
    every model from another part of the config (the model's and the task's ``vocab_size``; not a
    hybrid's layers, which are each named) is named once; one a model lacks is left out of its text.
    ``omit`` lists full paths shown elsewhere (a table's width column: ``"d_model"``)."""
    flats = [flatten(model) for model in models]
    columns = {key: [json.dumps(flat.get(key)) for flat in flats]
               for key in dict.fromkeys(key for flat in flats for key in flat) if key not in omit}
    varying = [key for key, column in columns.items() if len(set(column)) > 1]
    kept = [key for i, key in enumerate(varying)
            if not any(_repeats(key, other, columns) for other in varying[:i])]
    names = {key: _unique_end(key, kept) for key in kept}
    return [" ".join(f"{names[key]}={flat[key]}" for key in kept if key in flat) for flat in flats]


def _last(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _repeats(key: str, other: str, columns: dict[str, list[str]]) -> bool:
    """Whether ``key`` says again what ``other`` says: its name and values, in another part."""
    return (_last(key) == _last(other) and columns[key] == columns[other]
            and key.split(".", 1)[0] != other.split(".", 1)[0])


def _unique_end(key: str, keys: list[str]) -> str:
    """The shortest dotted end of ``key`` that ends no other of ``keys``."""
    parts = key.split(".")
    for n in range(1, len(parts)):
        end = ".".join(parts[-n:])
        if not any(other != key and (other == end or other.endswith("." + end)) for other in keys):
            return end
    return key


@dataclass(frozen=True)
class FrontierPoint:
    """One point of the frontier: the best run (over learning rates) of one model in one panel.

    ``accuracy`` is the mean over the seeds of the best setting (:func:`run_setting`); ``seeds`` holds
    each seed's accuracy, ``seed_runs`` each seed's (seed, run id), and ``interval`` the 95% bootstrap
    interval of the mean when there are two or more (else ``()`` and None). ``budget`` is the KV
    budget of an eviction panel's point (None elsewhere) and ``policy`` its eviction policy's
    settings, ``prefill_tokens`` the best seed's mean prompt length when the evaluation reported it,
    ``runs`` how many runs the point is the best of, ``model`` the stored model config and ``task``
    the config of the task it scored (their varying settings tag the point), ``evaluation`` which
    of its runs' stored evaluations it is (their index in ``metrics["evals"]``, the same for every
    seed), ``eval_tasks`` whether its runs were scored on their ``eval_tasks`` (trained on a task
    that is a setting like the lr) rather than on the task they trained on. ``run_id`` is the best
    seed's run. ``diverged`` counts the seeds that diverged (each scored 0 in the mean).
    """

    panel: str
    label: str
    d_model: int
    state_size: int
    accuracy: float
    budget: float | None
    prefill_tokens: float | None
    lr: float | None
    run_id: str
    num_params: int | None
    wall_time: float | None
    runs: int
    model: dict[str, Any]
    seeds: tuple[float, ...] = ()
    interval: tuple[float, float] | None = None
    seed_runs: tuple[tuple[int, str], ...] = ()
    policy: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    evaluation: int = 0
    eval_tasks: bool = False
    diverged: int = 0


def tag_fields(point: FrontierPoint) -> dict[str, Any]:
    """What tells a point from the others of its line: its model config, the task it scored (two
    pair counts of MQAR at one length are two points, never one best of them) and whether that was
    an ``eval_tasks`` evaluation (beside runs scored on the task they trained on)."""
    return {**point.model, "task": point.task or {}, **({"eval_tasks": True} if point.eval_tasks else {})}


def setting_rank(seeds: list[tuple[bool, float]]) -> tuple[int, float]:
    """How a point picks one of its training settings from each seed's (finished, accuracy): the most
    seeds that finished, then the best mean (a diverged seed scores 0 there). A diverged seed is a
    measurement, not evidence for its setting: four diverged seeds never beat three that learned.
    Higher is better."""
    return sum(finished for finished, _ in seeds), mean(accuracy for _, accuracy in seeds)


def best_first(point: FrontierPoint) -> tuple[int, float, int]:
    """How a figure picks one of several points of a family (over widths or settings): the most
    seeds that finished (as :func:`setting_rank`), then the highest accuracy, then the smallest
    state, so that one lucky seed of a variant does not stand in for a mean over seeds. Higher is
    better."""
    return max(1, len(point.seeds)) - point.diverged, point.accuracy, -point.state_size


def error_bars(points: list[FrontierPoint]) -> list[list[float]]:
    """matplotlib's ``yerr`` for points with an interval: [below, above] the mean, never negative (the
    mean and the bootstrap's means are summed differently, so equal seeds can give -1e-17)."""
    return [[max(0.0, p.accuracy - p.interval[0]) for p in points],
            [max(0.0, p.interval[1] - p.accuracy) for p in points]]


def off_log_axis(line: list[FrontierPoint]) -> str:
    """The note for a line's points that a log state axis cannot draw (state 0, e.g. a mixer with no
    recurrent state): ``"label: 0.530 at state 0"``, or ``""`` when every point has a state."""
    return "; ".join(f"{p.label}: {p.accuracy:.3f} at state 0" for p in line if p.state_size <= 0)


def in_panel_order(points: list[FrontierPoint]) -> list[FrontierPoint]:
    """``points`` grouped by evaluation setting, in the order settings first appear, each setting's
    eviction panel right after it (a read-twice run's points sit with the task they read)."""
    def setting(point: FrontierPoint) -> str:
        return base_panel(point.panel) or point.panel

    order = {panel: i for i, panel in enumerate(dict.fromkeys(setting(p) for p in points))}
    return sorted(points, key=lambda p: (order[setting(p)], p.panel != setting(p)))


def accuracy_text(point: FrontierPoint) -> str:
    """``0.530``, or with seeds ``0.530 [0.410, 0.660] (3 seeds)``: the mean and its 95% interval;
    ``(3 seeds, 1 diverged)`` when some diverged, and ``diverged`` (``diverged (4 seeds)``) when all did."""
    seeds = max(1, len(point.seeds))
    if point.diverged == seeds:
        return "diverged" if seeds == 1 else f"diverged ({seeds} seeds)"
    if point.interval is None:
        return f"{point.accuracy:.3f}"
    low, high = point.interval
    diverged = f", {point.diverged} diverged" if point.diverged else ""
    return f"{point.accuracy:.3f} [{low:.3f}, {high:.3f}] ({seeds} seeds{diverged})"


def run_seed(config: dict[str, Any]) -> int:
    """The seed of a stored run config: its training seed, or an evaluation-only run's own."""
    return (config.get("train") or {}).get("seed", config.get("seed", 0))


def run_setting(config: dict[str, Any]) -> str:
    """Everything a stored run config holds but its seed and label, as a key: runs with equal keys
    differ only by seed and are averaged; any other difference (learning rate, steps, the task's pair
    count, a pretrained run's prompts, ...) makes another setting, never another seed."""
    rest = {k: v for k, v in config.items() if k not in ("seed", "label")}
    if isinstance(rest.get("train"), dict):
        rest["train"] = {k: v for k, v in rest["train"].items() if k != "seed"}
    return json.dumps(rest, sort_keys=True)
