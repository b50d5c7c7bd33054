"""Halving of learning-rate grids (``recallkit run --halving``): a run far behind its best sibling stops.

Runs whose configs differ only in learning rate (and label) form a group. The runner orders the
sweep so that one member of every group trains before the second member of any (:func:`order`);
each later member then trains against the curve of the group's best finished member
(:func:`reference`), and stops at its first evaluation from ``START`` of its steps on where its
accuracy is more than ``MARGIN`` below that curve at the same step (:func:`halt_rule`). The store
keeps such a run ``done``, with ``metrics["halted"]`` saying why; it cannot be the best setting of
its point, which is all a learning-rate grid asks of it. A run with no finished sibling (the first
of its group, or siblings training beside it) trains in full.
"""

from __future__ import annotations

import json
import math
from typing import Any

from recallkit.config import AnyRunConfig, RunConfig, run_config
from recallkit.training import HaltRule

MARGIN = 0.25
"""How far below the reference curve (accuracy) a run must be to stop."""
START = 0.25
"""The fraction of its steps before which no run stops (early curves are noisy)."""

def group_key(config: AnyRunConfig | dict[str, Any]) -> str:
    """What a run is apart from its learning rate and label: equal keys form a halving group.
    ``config`` is a run config or a stored one (a dict, validated again, defaults and all)."""
    config = run_config(config) if isinstance(config, dict) else config
    data = json.loads(config.canonical_json())
    train = {k: v for k, v in (data.get("train") or {}).items() if k != "lr"}
    return json.dumps({**{k: v for k, v in data.items() if k not in ("label", "train")}, "train": train},
                      sort_keys=True)


def order(todo: list[AnyRunConfig]) -> list[AnyRunConfig]:
    """``todo`` with the first member of every group first, then the second members, and so on
    (the order within each rank kept)."""
    ranks: list[list[AnyRunConfig]] = []
    seen: dict[str, int] = {}
    for config in todo:
        key = group_key(config)
        rank = seen[key] = seen.get(key, -1) + 1
        if rank == len(ranks):
            ranks.append([])
        ranks[rank].append(config)
    return [config for rank in ranks for config in rank]


def reference(config: AnyRunConfig, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best finished, unhalted run of ``config``'s group other than itself (by final accuracy):
    ``{"run_id", "label", "lr", "curve": [(step, accuracy), ...], "accuracy"}``, or None."""
    if not isinstance(config, RunConfig):  # an evaluation of a pretrained model: nothing to halt
        return None
    key, best = group_key(config), None
    for row in rows:
        metrics = row["metrics"] or {}
        if (row["status"] != "done" or row["run_id"] == config.run_id or "halted" in metrics
                or "train" not in row["config"] or group_key(row["config"]) != key
                or math.isnan(metrics["accuracy"])):  # no scored sequence: nothing to halt against
            continue
        if best is None or metrics["accuracy"] > best["accuracy"]:
            curve = [(c["step"], c["accuracy"]) for c in metrics.get("curve", []) if "accuracy" in c]
            best = {"run_id": row["run_id"], "label": row["label"], "lr": row["config"]["train"]["lr"],
                    "curve": curve, "accuracy": metrics["accuracy"]}
    return best


TIE = 1e-6
"""Gaps this close to the margin are ties (not behind): float32 rounding of k/n put 125 of 697 exact
0.25 gaps on either side."""


def halt_rule(ref: dict[str, Any], max_steps: int, margin: float = MARGIN, start: float = START) -> HaltRule:
    """Stop at an evaluation (step s, start * max_steps <= s < max_steps) with accuracy more than
    ``margin`` below r(s), the reference's accuracy at its last evaluation at or before s (its final
    one once its curve has ended, e.g. at an early stop). The last step is never a stop: the run has
    trained in full. Accuracies k/n are float32, so a gap of exactly ``margin`` is within TIE of it."""
    curve = sorted(ref["curve"])

    def rule(step: int, accuracy: float) -> str | None:
        earlier = [a for s, a in curve if s <= step]
        if not start * max_steps <= step < max_steps or not earlier:
            return None
        target = earlier[-1]
        if target - accuracy <= margin + TIE:
            return None
        return (f"halving: accuracy {accuracy:.3f} at step {step}, more than {margin} below "
                f"{ref['label']} lr={ref['lr']:g} ({target:.3f}; run {ref['run_id']})")

    return rule
