"""The capability map: each family's best accuracy per task setting, rows ordered by largest state."""

from __future__ import annotations

from recallkit.report import frontier_points, write_report
from recallkit.report.capability import capability_map, capability_table, has_capability_axis
from tests.test_report import row, synthetic_sweep


def suite_rows():
    """Three families on MQAR and copy (T=64), attention at two widths; Based never ran copy; an
    eviction evaluation of attention that must not become a family."""
    rows = [
        row("a1", "attention", 64, 1e-3, 0.70, state=4000),
        row("a2", "attention", 128, 1e-3, 0.95, state=8000),
        row("b1", "based", 64, 1e-3, 0.40, state=3000),
        row("m1", "mamba2", 64, 1e-3, 0.30, state=2000),
    ]
    for run_id, label, accuracy, state in [("a3", "attention", 0.95, 7000), ("m2", "mamba2", 0.10, 2000)]:
        copy = row(run_id, label, 64, 1e-3, accuracy, state=state)
        copy["config"]["task"] = {"name": "copy", "seq_len": 64}
        rows.append(copy)
    rows[0]["metrics"]["evals"] = [
        {"task": "mqar", "seq_len": 64, "state_size": 4000, "accuracy": 0.70},
        {"task": "mqar", "seq_len": 64, "state_size": 1000, "accuracy": 0.60, "policy": "h2o", "budget": 0.25,
         "mode": "prefill"},
    ]
    return rows


def test_the_map_takes_each_familys_best_point_per_task_and_orders_rows_by_largest_state():
    grid = capability_map(frontier_points(suite_rows()))
    assert grid.panels == ["copy T=64", "mqar T=64"]
    assert grid.labels == ["mamba2", "based", "attention"]  # largest states 2000 < 3000 < 8000
    assert grid.accuracy == [[0.10, 0.30], [None, 0.40], [0.95, 0.95]]
    assert grid.state == [[2000, 2000], [None, 3000], [7000, 8000]]  # the wider attention's state on mqar
    headers, cells = capability_table(frontier_points(suite_rows()))
    assert headers == ["model (largest state)", "copy T=64", "mqar T=64"]
    assert cells[1] == ["based (3k)", "", "0.400 (3k)"] and cells[2][0] == "attention (8k)"


def test_a_tie_goes_to_the_smaller_state():
    rows = [row("x", "attention", 64, 1e-3, 0.9, state=9000),
            row("y", "attention", 32, 1e-3, 0.9, state=3000)]
    assert capability_map(frontier_points(rows)).state == [[3000]]


def test_the_map_is_drawn_only_for_two_families_on_two_tasks(tmp_path):
    assert has_capability_axis(frontier_points(suite_rows()))
    assert not has_capability_axis(frontier_points(suite_rows()[:4]))  # one task setting
    apart = [row("p", "smollm2", 0, None, 0.7), row("a", "attention", 64, 1e-3, 0.9)]
    apart[0]["config"]["task"] = {"name": "phonebook_text", "seq_len": 64}
    assert not has_capability_axis(frontier_points(apart))  # two families, two settings, never met
    synthetic_sweep(tmp_path)  # two families, one task setting (its other panels are lengths)
    write_report(tmp_path)
    assert not (tmp_path / "capability.png").exists()


def test_the_report_writes_the_map_as_png_and_as_a_table(tmp_path, monkeypatch):
    import recallkit.report as report

    monkeypatch.setattr(report, "read_rows", lambda directory: suite_rows())
    _, page = write_report(tmp_path)
    assert (tmp_path / "capability.png").stat().st_size > 10_000
    html = page.read_text()
    assert 'id="capability"' in html and "<td>based (3k)</td><td></td><td>0.400 (3k)</td>" in html


def test_a_cell_with_seeds_gives_their_mean_and_interval():
    rows = suite_rows()
    for seed, accuracy in [(1, 0.50), (2, 0.60)]:
        extra = row(f"b{seed + 1}", "based", 64, 1e-3, accuracy, state=3000)
        extra["config"]["train"]["seed"] = seed
        rows.append(extra)
    grid = capability_map(frontier_points(rows))
    low, high = grid.interval[1][1]
    assert abs(grid.accuracy[1][1] - 0.50) < 1e-12 and 0.40 <= low < 0.50 < high <= 0.60
    assert grid.interval[2][1] is None  # attention: one seed
    _, cells = capability_table(frontier_points(rows))
    assert cells[1][2] == f"0.500 [{low:.3f}, {high:.3f}] (3k)"


def test_long_family_and_task_names_leave_every_cell_wide_enough_for_its_text(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from recallkit.report.capability import plot_capability_map
    from recallkit.report.common import FrontierPoint

    labels = ["gated_deltaproduct (householder 3, short conv, lr 3e-3, 2000 steps)", "attention"]
    panels = [f"compositional_mqar T={64 * (j + 1)} hops 2 pairs 16" for j in range(4)]
    points = [FrontierPoint(panel=panel, label=label, d_model=64, state_size=1234567, accuracy=0.5,
                            budget=None, prefill_tokens=None, lr=1e-3, run_id=f"{i}{j}", num_params=1,
                            wall_time=1.0, runs=3, model={}, seeds=(0.4, 0.5, 0.6), interval=(0.412, 0.598))
              for i, label in enumerate(labels) for j, panel in enumerate(panels)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_capability_map(points, tmp_path / "map.png")
    ax = figures[0].axes[0]
    renderer = figures[0].canvas.get_renderer()
    cell = ax.get_window_extent(renderer).width / len(panels)
    widths = [t.get_window_extent(renderer).width for t in ax.texts]
    assert len(widths) == len(labels) * len(panels) and max(widths) < 0.9 * cell
