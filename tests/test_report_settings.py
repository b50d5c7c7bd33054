"""What the report averages as seeds: runs that differ only by their seed. Any other difference (the
task's fields, an eviction policy's options, the model) is another setting or another point, in the
frontier, the length curves, the slice tables and the capability map; diverged seeds count 0."""

from __future__ import annotations

import copy

import pytest

from recallkit.report import frontier_points
from recallkit.report.capability import capability_map
from recallkit.report.interactive import frontier_figure
from recallkit.report.length_curves import length_curves
from recallkit.report.slices import slice_tables
from tests.test_report import row


def seeded(run_id, seed, accuracy, pairs=8, status="done"):
    out = row(run_id, "attention", 64, 1e-3, accuracy, status=status)
    out["config"]["train"]["seed"] = seed
    out["config"]["task"]["num_kv_pairs"] = pairs
    return out


def test_runs_of_two_task_settings_are_two_settings_not_two_seeds():
    """Trained on one task and evaluated on others, the training task is a setting like the lr: the
    best mean wins (never the per-seed best). Evaluated on the task it trained on, another task is
    another point of the line, tagged with what differs: the frontier never shows the easiest one."""
    # 8 pairs at seeds 0, 1: 0.9, 0.3 (mean 0.6); 4 pairs: 0.2, 0.8 (mean 0.5)
    rows = [seeded("a", 0, 0.9), seeded("b", 1, 0.3),
            seeded("c", 0, 0.2, pairs=4), seeded("d", 1, 0.8, pairs=4)]
    evaluated_elsewhere = copy.deepcopy(rows)
    for run in evaluated_elsewhere:
        run["config"]["eval_tasks"] = [{**run["config"]["task"], "num_kv_pairs": 8}]
    (point,) = frontier_points(evaluated_elsewhere)
    assert point.accuracy == pytest.approx(0.6) and point.seeds == (0.9, 0.3)  # not the per-seed best, 0.85
    assert point.seed_runs == ((0, "a"), (1, "b")) and point.runs == 4
    (alone,) = frontier_points([evaluated_elsewhere[0], evaluated_elsewhere[3]])  # one seed of each
    assert alone.accuracy == 0.9 and alone.seeds == () and alone.interval is None
    four, eight = sorted(frontier_points(rows), key=lambda p: p.task["num_kv_pairs"])
    assert (four.seeds, eight.seeds) == ((0.2, 0.8), (0.9, 0.3)) and four.runs == eight.runs == 2
    figure = frontier_figure([four, eight], rows)
    hover = " ".join(h for trace in figure.data for h in trace.hovertext)
    assert "num_kv_pairs=4" in hover and "num_kv_pairs=8" in hover


def _evicted(run_id, seed, accuracies):
    """A run evaluated under h2o at one budget with two recent ratios, ``accuracies`` in that order."""
    out = seeded(run_id, seed, 0.99)
    out["metrics"]["evals"] = [{"task": "mqar", "seq_len": 64, "state_size": 100, "accuracy": 0.99}] + [
        {"task": "mqar", "seq_len": 64, "state_size": 40, "accuracy": accuracy, "policy": "h2o",
         "policy_config": {"name": "h2o", "recent_ratio": ratio}, "budget": 0.25, "mode": "prefill"}
        for ratio, accuracy in zip((0.5, 0.1), accuracies)]
    return out


def test_eviction_policies_with_other_options_are_other_settings_and_the_hover_names_the_right_one():
    rows = [_evicted("s0", 0, (0.5, 0.7)), _evicted("s1", 1, (0.4, 0.2))]  # each ratio's mean: 0.45
    rows.append(_evicted("s2", 2, (0.5, 0.1)))  # ratio 0.5 now leads: 0.467 against 0.333
    (point,) = [p for p in frontier_points(rows) if p.budget is not None]
    assert point.accuracy == pytest.approx(1.4 / 3) and point.seeds == (0.5, 0.4, 0.5)
    assert point.policy == {"name": "h2o", "recent_ratio": 0.5} and point.runs == 3
    hover = next(t for t in frontier_figure(frontier_points(rows), rows).data if t.name == "attention [h2o]")
    assert "recent_ratio=0.5" in hover.hovertext[0] and "recent_ratio=0.1" not in hover.hovertext[0]


def _length_row(run_id, seed, accuracies, status="done", position="rope"):
    out = seeded(run_id, seed, accuracies[0], status=status)
    out["config"]["model"]["position"] = position
    out["metrics"]["evals"] = [
        {"task": "copy", "seq_len": 16, "setting": "copy T=16", "state_size": 100, "accuracy": a,
         "exact_match": a, "length": length} for length, a in zip((8, 16, 32), accuracies)]
    return out


def test_length_curves_keep_models_apart_and_count_a_diverged_seed_as_zero():
    rope = [_length_row("r0", 0, (0.9, 0.6, 0.3)), _length_row("r1", 1, (0.7, 0.4, 0.1))]
    nope = [_length_row("n0", 0, (0.5, 0.5, 0.5), position="none")]
    curves = length_curves(rope + nope)
    seeds = sorted(len(c["seeds"][0]) if c["seeds"] else 1 for c in curves)
    assert seeds == [1, 2]  # two models, not one of three seeds
    diverged = _length_row("r2", 2, (0.8, 0.8, 0.8), status="diverged")
    (curve,) = [c for c in length_curves(rope + [diverged]) if c["seeds"]]
    assert [p[1] for p in curve["points"]] == pytest.approx([1.6 / 3, 1.0 / 3, 0.4 / 3])
    assert curve["seeds"][0] == [0.9, 0.7, 0.0] and curve["headline"] == pytest.approx(1.6 / 3)


def _sliced(run_id, seed, accuracy, by_pairs, status="done"):
    out = seeded(run_id, seed, accuracy, status=status)
    out["metrics"]["evals"] = [{"task": "mqar", "seq_len": 64, "state_size": 100, "accuracy": accuracy,
                                "slices": {"num_kv_pairs": {k: {"accuracy": a, "num_examples": 10}
                                                            for k, a in by_pairs.items()}}}]
    return out


def test_a_slice_table_row_is_the_mean_over_the_points_seeds():
    rows = [_sliced("a", 0, 0.3, {"4": 0.4, "8": 0.2}), _sliced("b", 1, 0.5, {"4": 0.6, "8": 0.4}),
            _sliced("c", 2, 0.7, {"4": 0.8, "8": 0.6})]
    (table,) = slice_tables(rows, frontier_points(rows))
    ((_, values),) = table.rows
    assert values["4"]["accuracy"] == pytest.approx(0.6) and values["8"]["accuracy"] == pytest.approx(0.4)
    assert values["4"]["seeds"] == 3  # not the best seed's 0.8 / 0.6
    rows[2] = _sliced("c", 2, 0.0, {"4": 0.8, "8": 0.6}, status="diverged")
    ((_, values),) = slice_tables(rows, frontier_points(rows))[0].rows
    assert values["4"]["accuracy"] == pytest.approx(1.0 / 3) and values["4"]["seeds"] == 3


def test_the_capability_map_prefers_a_mean_over_seeds_to_one_lucky_variant():
    rows = [seeded(f"s{seed}", seed, accuracy) for seed, accuracy in enumerate((0.7, 0.8, 0.9))]
    lucky = copy.deepcopy(seeded("w", 0, 0.99))
    lucky["config"]["model"]["window"] = 8  # a one-seed variant of the same family
    grid = capability_map(frontier_points(rows + [lucky]))
    assert grid.accuracy == [[pytest.approx(0.8)]] and grid.interval[0][0] is not None


def test_seeds_that_all_diverged_never_beat_a_setting_whose_seeds_learned():
    """Four diverged seeds of lr=1e30 (mean 0) beat three learning seeds on 'most seeds' alone: every
    point then showed 'diverged'. The setting with the most seeds that finished wins."""
    working = [seeded(f"w{s}", s, 0.5) for s in range(3)]
    blown = [seeded(f"d{s}", s, 0.9, status="diverged") for s in range(4)]
    for run in blown:
        run["config"]["train"]["lr"] = 1e30
    (point,) = frontier_points(working + blown)
    assert point.lr == 1e-3 and point.accuracy == pytest.approx(0.5) and point.diverged == 0
    half = working[:2] + [seeded("h", 2, 0.9, status="diverged")]  # a setting with a diverged seed
    (point,) = frontier_points(half)
    assert point.diverged == 1 and point.accuracy == pytest.approx(1.0 / 3)


def test_the_length_curve_takes_the_setting_the_frontier_takes():
    """The frontier and slice tables took lr=1e-5 (three seeds) while lengths.png took lr=1e-2 (one
    lucky seed): one page disagreed with itself."""
    steady = [_length_row(f"s{s}", s, (0.5, 0.4, 0.3)) for s in range(3)]
    lucky = _length_row("l", 0, (1.0, 1.0, 1.0))
    lucky["config"]["train"]["lr"] = 1e-2
    for run in steady + [lucky]:  # the headline evaluation, as training stores it first
        headline = {**run["metrics"]["evals"][0], "accuracy": run["metrics"]["accuracy"]}
        del headline["length"]
        run["metrics"]["evals"].insert(0, headline)
    (point,) = frontier_points(steady + [lucky])
    (curve,) = length_curves(steady + [lucky])
    assert point.lr == curve["lr"] == 1e-3 and len(curve["seeds"][0]) == 3


def test_figures_rank_a_family_point_by_its_seeds_that_finished():
    from dataclasses import replace

    from recallkit.report.common import best_first

    learned = frontier_points([seeded(f"w{s}", s, 0.5) for s in range(3)])[0]
    blown = replace(learned, seeds=(0.0,) * 4, accuracy=0.0, diverged=4)
    assert best_first(learned) > best_first(blown)
