"""Compact text of a run's config for hover boxes: one line per part, ``key=value`` pairs, wrapped."""

from __future__ import annotations

import html
from typing import Any

from recallkit.report.common import FrontierPoint, flatten, tag_fields, varying_settings

WRAP = 96
"""Characters per hover line: wide enough for a mixer's fields, narrow enough for a laptop screen."""

LIST_ITEMS = 3
"""Longer lists of settings outside model, task and train show as a count."""


def _pairs(fields: dict[str, Any]) -> list[str]:
    """``key=value`` for every set field (None means "default" and only adds noise)."""
    return [f"{key}={value}" for key, value in flatten(fields).items() if value is not None and key]


def _wrap(head: str, pairs: list[str]) -> list[str]:
    lines, line = [], head
    for pair in pairs:
        if len(line) + len(pair) + 1 > WRAP and line.strip():
            lines.append(line)
            line = "    "
        line += ("" if line.endswith(" ") else " ") + pair
    lines.append(line)
    return lines


def config_lines(config: dict[str, Any]) -> list[str]:
    """The run config as short lines: the mixer(s), the rest of the model, the task, training.

    Args:
        config: a stored run config (``model``, ``task``, ``train``, optional ``eval_tasks``, ...).

    Returns:
        HTML-escaped lines (plotly hover text is HTML), without line breaks.
    """
    model = dict(config.get("model") or {})
    mixers = model.pop("mixer", None)
    mixers = mixers if isinstance(mixers, list) else [mixers] if mixers else []
    lines = []
    for i, mixer in enumerate(mixers):
        mixer = dict(mixer)
        head = f"mixer {i}:" if len(mixers) > 1 else "mixer:"
        lines += _wrap(f"{head} {mixer.pop('name', '?')}", _pairs(mixer))
    lines += _wrap("model:", _pairs(model))
    task = dict(config.get("task") or {})
    lines += _wrap(f"task: {task.pop('name', '?')}", _pairs(task))
    for extra in config.get("eval_tasks") or []:
        extra = dict(extra)
        lines += _wrap(f"eval: {extra.pop('name', '?')}", _pairs(extra))
    lines += _wrap("train:", _pairs(config.get("train") or {}))
    other = {k: v for k, v in config.items()
             if k not in ("model", "task", "eval_tasks", "train", "label") and v not in (None, [], {})}
    pairs = []
    for key, value in other.items():
        # a long list (e.g. a hundred eviction policies) would bury the rest: count it instead
        long = isinstance(value, list) and len(value) > LIST_ITEMS
        pairs += [f"{key}=[{len(value)} entries]"] if long else _pairs({key: value})
    if pairs:
        lines += _wrap("other:", pairs)
    return [html.escape(line) for line in lines]


def point_names(points: list[FrontierPoint], omit: tuple[str, ...] = ()) -> list[str]:
    """A name per frontier point: its label plus the model and task settings that vary within that
    label in its panel (``"attention window=8"``), so the points of one family stay distinguishable in
    tables; ``omit`` lists settings a table shows in their own column (``"d_model"``)."""
    tags: dict[int, str] = {}
    for panel, label in dict.fromkeys((p.panel, p.label) for p in points):
        group = [p for p in points if (p.panel, p.label) == (panel, label)]
        tags.update(zip(map(id, group), varying_settings([tag_fields(p) for p in group], omit)))
    return [f"{p.label} {tags[id(p)]}".strip() for p in points]
