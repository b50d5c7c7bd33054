"""Seeds as a sweep axis in the report: a point's mean over seeds, its 95% bootstrap interval (checked
against the exact bootstrap distribution, enumerated), error bars in the PNG and the HTML page."""

from __future__ import annotations

import itertools

import pytest

from recallkit.report import frontier_points, write_report
from recallkit.report.common import accuracy_text
from recallkit.report.interactive import frontier_figure
from recallkit.report.stats import bootstrap_interval, seed_mean
from recallkit.sweep import Store
from tests.conftest import tiny_run
from tests.test_report import row
from recallkit.report.capability import capability_map


def seeded(run_id, lr, seed, accuracy, label="attention"):
    out = row(run_id, label, 64, lr, accuracy)
    out["config"]["train"]["seed"] = seed
    return out


def exact_quantile(values, q):
    """The q-quantile of the exact bootstrap distribution of the mean: every one of the n^n ordered
    resamples, equally likely (Efron's definition), enumerated."""
    means = sorted(sum(draw) / len(values) for draw in itertools.product(values, repeat=len(values)))
    return means[min(len(means) - 1, int(q * len(means)))]


@pytest.mark.parametrize("values", [[0.0, 1.0], [0.2, 0.5, 0.9], [0.1, 0.1, 0.4, 0.8, 0.85]])
def test_bootstrap_interval_matches_the_enumerated_bootstrap_distribution(values):
    low, high = bootstrap_interval(values)
    steps = sorted({abs(a - b) / len(values) for a in values for b in values} - {0.0})
    tolerance = steps[0] + 1e-9  # Monte Carlo may land one grid step of the means away
    assert abs(low - exact_quantile(values, 0.025)) <= tolerance
    assert abs(high - exact_quantile(values, 0.975)) <= tolerance
    assert bootstrap_interval(values) == (low, high)  # seeded
    assert bootstrap_interval([0.5]) is None


def test_a_point_averages_its_seeds_at_the_learning_rate_with_the_best_mean():
    rows = [seeded("a", 1e-3, 0, 0.95), seeded("b", 1e-3, 1, 0.15), seeded("c", 1e-3, 2, 0.20),  # mean 0.43
            seeded("d", 3e-3, 0, 0.60), seeded("e", 3e-3, 1, 0.50), seeded("f", 3e-3, 2, 0.70)]  # mean 0.60
    (point,) = frontier_points(rows)
    assert point.lr == 3e-3 and point.accuracy == pytest.approx(0.6)  # not the single best run's 0.95
    assert point.seeds == (0.6, 0.5, 0.7) and point.run_id == "f" and point.runs == 6
    low, high = point.interval
    assert 0.5 <= low < 0.6 < high <= 0.7
    assert accuracy_text(point) == f"0.600 [{low:.3f}, {high:.3f}] (3 seeds)"
    (single,) = frontier_points(rows[:1] + rows[3:4])
    assert single.interval is None and single.seeds == () and accuracy_text(single) == "0.950"


def test_a_setting_with_more_seeds_wins_and_halted_or_unscored_runs_are_left_out():
    """One lucky seed of a setting whose other seeds failed does not beat a three-seed mean; a run
    that halving stopped (a shorter run's accuracy) and one that scored nothing (NaN, which max()
    would keep whenever it came first) are not seeds of their setting."""
    failed = [seeded("f1", 1e-2, 1, 0.0), seeded("f2", 1e-2, 2, 0.0)]
    for run in failed:
        run["status"], run["metrics"] = "failed", None
    rows = [seeded("a", 1e-3, 0, 0.62), seeded("b", 1e-3, 1, 0.60), seeded("c", 1e-3, 2, 0.61),
            seeded("lucky", 1e-2, 0, 0.70), *failed]
    (point,) = frontier_points(rows)
    assert point.lr == 1e-3 and point.seeds == (0.62, 0.60, 0.61)
    halted = seeded("h", 3e-3, 0, 0.95)
    halted["metrics"]["halted"] = "accuracy 0.50 at step 50 is 0.25 below lr 0.001's"
    nan = [seeded("n0", 1e-4, 0, float("nan")), seeded("n1", 1e-4, 1, float("nan")),
           seeded("n2", 1e-4, 2, float("nan"))]
    for order in (1, -1):
        (point,) = frontier_points((nan + [seeded("h1", 3e-3, 1, 0.9), seeded("h2", 3e-3, 2, 0.9), halted]
                                    + rows[:3])[::order])
        assert point.lr == 1e-3 and point.accuracy == pytest.approx(0.61)
    (point,) = frontier_points([*rows[:2], seeded("c", 1e-3, 2, float("nan"))])
    assert point.seeds == (0.62, 0.60) and point.interval[1] == pytest.approx(0.62)
    assert frontier_points(nan) == []


def test_the_figures_and_tables_show_the_interval_and_every_seed(tmp_path):
    rows = [seeded(str(i), 1e-3, i, a) for i, a in enumerate([0.3, 0.5, 0.7])]
    rows.append(seeded("x", 1e-3, 0, 0.4, label="based"))  # one seed: no bar
    figure = frontier_figure(frontier_points(rows), rows)
    traces = {trace.name: trace for trace in figure.data}
    hover = traces["attention"].hovertext[0]
    assert "seeds 0: 0.300, 1: 0.500, 2: 0.700" in hover and "(3 seeds)" in hover
    bars = traces["attention"].error_y
    (point,) = [p for p in frontier_points(rows) if p.label == "attention"]
    assert bars.array[0] == pytest.approx(point.interval[1] - 0.5)
    assert bars.arrayminus[0] == pytest.approx(0.5 - point.interval[0])
    assert traces["based"].error_y.array is None


def test_the_frontier_png_says_what_its_bars_are_when_it_has_any(tmp_path, monkeypatch):
    from recallkit.report import frontier

    titles, close = [], frontier.plt.close
    monkeypatch.setattr(frontier.plt, "close",
                        lambda fig: titles.append(fig._suptitle.get_text()) or close(fig))
    seeded_rows = [seeded(str(i), 1e-3, i, a) for i, a in enumerate([0.3, 0.5, 0.7])]
    frontier.plot_frontier(frontier_points(seeded_rows), tmp_path / "a.png")
    frontier.plot_frontier(frontier_points(seeded_rows[:1]), tmp_path / "b.png")
    assert "95% bootstrap interval" in titles[0] and "interval" not in titles[1]


def test_a_seeded_sweep_reports_mean_and_interval_in_the_page_and_the_png(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    bars, errorbar = [], Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda ax, x, y, **kw: bars.append((x, y, kw["yerr"])) or
                        errorbar(ax, x, y, **kw))
    configs = [tiny_run(seed=seed) for seed in (0, 1, 2)] + [tiny_run(seed=0, lr=1e-2)]
    with Store(tmp_path / "results.sqlite") as store:
        store.add(configs)
        for config, accuracy in zip(configs, [0.3, 0.5, 0.7, 0.2], strict=True):
            store.record(config.run_id, {"status": "done", "metrics": {"accuracy": accuracy},
                                         "state_size": 100, "num_params": 9, "wall_time": 1.0})
    png, page = write_report(tmp_path)
    with Store(tmp_path / "results.sqlite", readonly=True) as store:
        (point,) = frontier_points(store.rows())
    assert point.accuracy == pytest.approx(0.5) and point.runs == 4  # lr 1e-2's one seed is worse
    low, high = point.interval
    assert bars == [([100], [point.accuracy], [[point.accuracy - low], [high - point.accuracy]])]
    assert accuracy_text(point) in page.read_text() and png.stat().st_size > 10_000


def test_the_width_figure_draws_the_interval_of_a_seeded_width(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from recallkit.report.width import plot_width_curves

    bars, errorbar = [], Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda ax, x, y, **kw: bars.append((x, y, kw["yerr"])) or
                        errorbar(ax, x, y, **kw))
    rows = [seeded(str(i), 1e-3, i, a) for i, a in enumerate([0.3, 0.5, 0.7])]  # d=64 at three seeds
    wide = row("w", "attention", 128, 1e-3, 0.9)  # d=128 at one seed: no bar
    points = frontier_points(rows + [wide])
    (point,) = [p for p in points if p.d_model == 64]
    low, high = point.interval
    assert plot_width_curves(points, tmp_path / "width.png").stat().st_size > 10_000
    assert bars == [([64], [pytest.approx(0.5)], [[pytest.approx(0.5 - low)], [pytest.approx(high - 0.5)]])]


def test_equal_seeds_draw_in_both_figures(tmp_path):
    from recallkit.report.common import error_bars
    from recallkit.report.frontier import plot_frontier
    from recallkit.report.width import plot_width_curves

    rows = [seeded(str(i), 1e-3, i, 0.1) for i in range(3)] + [row("w", "attention", 128, 1e-3, 0.9)]
    points = frontier_points(rows)
    (point,) = [p for p in points if p.d_model == 64]
    assert error_bars([point])[0] == [0.0]  # the bootstrap's sum of 0.1s exceeds the mean's 0.1
    plot_width_curves(points, tmp_path / "width.png")  # matplotlib refuses a negative bar
    plot_frontier(points, tmp_path / "frontier.png")


def test_equal_seeds_draw_no_negative_error_bar():
    rows = [seeded(str(i), 1e-3, i, 0.1) for i in range(3)]  # plain resampled sums of 0.1 round above it
    (point,) = frontier_points(rows)
    assert point.interval == (point.accuracy, point.accuracy)  # never a negative bar, nor a digit off
    bars = frontier_figure(frontier_points(rows), rows).data[0].error_y
    assert min(bars.array) >= 0 and min(bars.arrayminus) >= 0


def test_the_terminal_table_gives_the_interval_and_the_page_says_why_a_run_halted(tmp_path):
    from rich.console import Console

    from recallkit.cli import _frontier_table
    from recallkit.report.html import write_html

    rows = [seeded(str(i), 1e-3, i, a) for i, a in enumerate([0.3, 0.5, 0.7])]
    halted = seeded("h", 3e-3, 0, 0.1)
    halted["metrics"]["halted"] = "accuracy 0.100 at step 50, more than 0.25 below lr 0.001's"
    console = Console(width=200, record=True)
    console.print(_frontier_table(rows + [halted]))
    (point,) = frontier_points(rows + [halted])
    assert accuracy_text(point) in console.export_text() and "(3 seeds)" in accuracy_text(point)
    page = write_html(rows + [halted], [point], tmp_path / "report.html", "t", []).read_text()
    assert "halted: accuracy 0.100 at step 50, more than 0.25 below lr 0.001&#x27;s" in page


def test_a_diverged_seed_counts_zero_even_when_its_last_evaluation_scored():
    """A diverged run is evaluated with its last finite weights, so its stored accuracy can be high;
    the frontier still counts it 0 (as the slice tables and length curves do)."""
    diverged = seeded("d", 1e-3, 1, 0.8)
    diverged["status"] = "diverged"
    (point,) = frontier_points([seeded("a", 1e-3, 0, 0.6), diverged])
    assert point.accuracy == pytest.approx(0.3)
    assert point.seeds == (0.6, 0.0) and point.run_id == "a"


def test_capability_rows_are_ordered_by_each_familys_largest_state():
    rows = [row("a1", "attention", 32, 1e-3, 0.5, state=1000),   # attention: 1000 .. 8000
            row("a2", "attention", 128, 1e-3, 0.9, state=8000),
            row("m1", "mamba2", 64, 1e-3, 0.3, state=2000)]       # mamba2: 2000
    grid = capability_map(frontier_points(rows))
    assert grid.labels == ["mamba2", "attention"]  # largest 2000 < 8000 (smallest would be 1000 < 2000)
    assert grid.accuracy == [[0.3], [0.9]]


@pytest.mark.parametrize("accuracy", [9 / 400, 0.1, 27 / 800])
def test_equal_seeds_print_an_interval_that_holds_their_mean(accuracy):
    """Three seeds at 9/400 printed 0.022 [0.023, 0.023]: the mean and the resampled means were
    summed differently and fell on either side of a rounding edge."""
    (point,) = frontier_points([seeded(str(i), 1e-3, i, accuracy) for i in range(3)])
    mean_text = f"{point.accuracy:.3f}"
    assert accuracy_text(point).startswith(f"{mean_text} [{mean_text}, {mean_text}] (3 seeds)")


def test_every_interval_holds_its_mean_and_nan_is_refused():
    values = [k / 800 for k in (3, 5, 7, 9, 11)]
    for n in range(2, 6):
        for start in range(len(values) - 1):
            seeds = (values[start:] + values[:start])[:n]
            low, high = bootstrap_interval(seeds)
            assert low <= seed_mean(seeds) <= high
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_interval([0.5, float("nan"), 0.7])


def test_two_evaluations_of_one_run_in_one_panel_are_two_points_with_their_own_slices():
    """A run evaluated on MQAR at 2 and at 4 pairs (one length: one panel) lost its 4-pair evaluation
    from the whole report (one kept per seed), and the slice table read the first for both."""
    from recallkit.report.hover import point_names
    from recallkit.report.slices import slice_tables

    tasks = [{"name": "mqar", "seq_len": 64, "num_kv_pairs": pairs} for pairs in (2, 4)]
    rows = []
    for seed, (two, four) in enumerate([(0.9, 0.3), (0.8, 0.4)]):
        out = seeded(str(seed), 1e-3, seed, two)
        out["config"]["eval_tasks"] = tasks
        out["metrics"]["evals"] = [
            {"task": "mqar", "seq_len": 64, "setting": "mqar T=64", "state_size": 100, "accuracy": accuracy,
             "slices": {"num_kv_pairs": {str(pairs): {"accuracy": accuracy}, "9": {"accuracy": 0.0}}}}
            for accuracy, pairs in ((two, 2), (four, 4))]
        rows.append(out)
    points = frontier_points(rows)
    assert sorted(p.accuracy for p in points) == pytest.approx([0.35, 0.85])
    assert sorted(point_names(points)) == ["attention num_kv_pairs=2", "attention num_kv_pairs=4"]
    (table,) = slice_tables(rows, points)
    assert {name: set(values) - {"9"} for name, values in table.rows} == {
        "attention num_kv_pairs=2": {"2"}, "attention num_kv_pairs=4": {"4"}}


def test_a_seed_whose_length_evaluation_scored_nothing_is_left_out_of_that_length(tmp_path):
    """A NaN length evaluation (no sequence scored) of one seed stopped the whole report once the
    bootstrap refused NaN; that seed is now no measurement at that length, as on the frontier."""
    from recallkit.report.length_curves import length_curves

    def run(run_id, seed, at_8):
        evals = [{"task": "copy", "seq_len": 64, "setting": "copy T=64", "state_size": 10, "accuracy": 0.9}]
        evals += [{"task": "copy", "seq_len": 64, "setting": "copy T=64", "length": length,
                   "state_size": 10, "accuracy": accuracy, "exact_match": accuracy}
                  for length, accuracy in ((8, at_8), (16, 0.5))]
        return {"run_id": run_id, "label": "attention", "status": "done", "state_size": 10, "num_params": 1,
                "wall_time": 1.0, "error": None, "metrics": {"accuracy": 0.9, "evals": evals},
                "config": {"model": {"d_model": 64}, "task": {"name": "copy", "seq_len": 64},
                           "train": {"lr": 1e-3, "seed": seed}}}

    rows = [run("a", 0, 0.7), run("b", 1, float("nan")), run("c", 2, 0.8)]
    halted = run("h", 3, 0.0)  # halving stopped it: no seed here either (it counted, and won by count)
    halted["metrics"]["halted"] = "halving: accuracy 0.000 at step 20, more than 0.25 below ..."
    assert length_curves(rows + [halted]) == length_curves(rows)
    (curve,) = length_curves(rows)
    assert [point[:2] for point in curve["points"]] == [(8, pytest.approx(0.75)), (16, 0.5)]
    assert curve["interval"][0] == (0.7, 0.8)
    (two,) = length_curves(rows[:2])  # one finite seed at length 8: no band there
    assert two["points"][0][1] == 0.7 and all(v != v for v in two["interval"][0])
    from recallkit.report.length_curves import plot_length_curves
    from recallkit.report.lengths import length_figure

    assert plot_length_curves([two], tmp_path / "lengths.png").is_file()
    assert length_figure(rows[:2]) is not None


def _scored(run_id, accuracy, train_pairs, eval_tasks, policy=None):
    evals = [{"task": "mqar", "seq_len": 64, "setting": "mqar T=64", "state_size": 100, "accuracy": accuracy,
              "slices": {"num_kv_pairs": {"2": {"accuracy": accuracy}, "4": {"accuracy": accuracy / 2}}}}]
    if policy:
        evals.append({**evals[0], "state_size": 50, "policy": policy, "budget": 0.5, "mode": "continuous",
                      "budget_tokens": 32, "policy_config": {"name": policy}})
    config = {"model": {"d_model": 64}, "task": {"name": "mqar", "seq_len": 64, "num_kv_pairs": train_pairs},
              "train": {"lr": 1e-3, "seed": 0}}
    if eval_tasks:
        config["eval_tasks"] = [{"name": "mqar", "seq_len": 64, "num_kv_pairs": 4}]
    return {"run_id": run_id, "label": "attention", "status": "done", "state_size": 100, "num_params": 1,
            "wall_time": 1.0, "error": None, "metrics": {"accuracy": accuracy, "evals": evals},
            "config": config}


def test_a_run_scored_on_its_eval_tasks_is_named_apart_from_one_scored_on_its_training_task():
    """Both scored MQAR at 4 pairs, one having trained on it and one on 8 pairs: two points, which
    printed under one name once a point's task became the task it scored."""
    from recallkit.report.hover import point_names

    points = frontier_points([_scored("x", 0.9, 4, False), _scored("y", 0.6, 8, True)])
    assert sorted(point_names(points)) == ["attention", "attention eval_tasks=True"]


def test_eviction_panels_have_no_slice_tables():
    from recallkit.report.slices import slice_tables

    rows = [_scored("a", 0.9, 4, False, policy="h2o")]
    assert [table.panel for table in slice_tables(rows, frontier_points(rows))] == ["mqar T=64"]
