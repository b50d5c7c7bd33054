"""Frontier points (best lr per model and width) and the self-contained HTML page."""

from __future__ import annotations

import recallkit as rk
from recallkit.report import frontier_points, write_report
from recallkit.sweep import Store
from tests.conftest import tiny_run


def row(run_id, label, d, lr, accuracy, status="done", T=64, state=100):
    return {
        "run_id": run_id, "label": label, "status": status, "state_size": state, "num_params": 10,
        "wall_time": 1.0, "error": None, "metrics": {"accuracy": accuracy},
        "config": {"model": {"d_model": d}, "task": {"name": "mqar", "seq_len": T}, "train": {"lr": lr}},
    }


def test_frontier_takes_the_best_learning_rate_per_model_and_width():
    rows = [
        row("a", "attention", 64, 1e-3, 0.2), row("b", "attention", 64, 3e-3, 0.9),
        row("c", "attention", 128, 1e-3, 0.95), row("d", "attention", 128, 3e-3, float("nan"), "diverged"),
        row("e", "attention", 64, 1e-2, 0.99, status="failed"), row("f", "attention", 64, 1e-2, 1.0, T=128),
    ]
    points = {(p["panel"], p["d_model"]): p for p in frontier_points(rows)}
    assert points[("mqar T=64", 64)]["accuracy"] == 0.9 and points[("mqar T=64", 64)]["lr"] == 3e-3
    assert points[("mqar T=64", 128)]["accuracy"] == 0.95
    assert points[("mqar T=128", 64)]["accuracy"] == 1.0
    assert len(points) == 3


def test_report_on_an_empty_sweep_renders_with_a_message(tmp_path):
    Store(tmp_path / "results.sqlite").close()
    png, page = write_report(tmp_path)
    assert png.stat().st_size > 0
    assert "No finished runs yet" in page.read_text()


def test_report_embeds_the_figure_and_lists_runs(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        config = tiny_run()
        store.add([config])
        store.record(config.run_id, {"status": "done", "metrics": {"accuracy": 0.5, "token_accuracy": 0.5},
                                     "state_size": 512, "num_params": 9, "wall_time": 1.5})
    _, page = write_report(tmp_path)
    html = page.read_text()
    assert "data:image/png;base64," in html and config.run_id in html and "512" in html
    assert "http://" not in html and "https://" not in html  # self-contained, works offline


def test_a_run_evaluated_at_two_lengths_gives_a_point_in_each_panel():
    r = row("a", "attention", 64, 1e-3, 0.9)
    r["metrics"]["evals"] = [
        {"task": "mqar", "seq_len": 64, "state_size": 100, "accuracy": 0.9},
        {"task": "mqar", "seq_len": 128, "state_size": 200, "accuracy": 0.7},
    ]
    points = frontier_points([r])
    assert [(p["panel"], p["state_size"], p["accuracy"]) for p in points] == [
        ("mqar T=64", 100, 0.9), ("mqar T=128", 200, 0.7)
    ]


def test_varying_settings_names_only_what_differs():
    from recallkit.report.frontier import varying_settings

    models = [
        {"d_model": 64, "mixer": [{"name": "attention", "window": 8}, {"name": "linear_attention", "feature_dim": 4}]},
        {"d_model": 64, "mixer": [{"name": "attention", "window": 32}, {"name": "linear_attention", "feature_dim": 4}]},
        {"d_model": 64, "mixer": [{"name": "attention", "window": 8}, {"name": "linear_attention", "feature_dim": 16}]},
    ]
    assert varying_settings(models) == ["window=8 feature_dim=4", "window=32 feature_dim=4", "window=8 feature_dim=16"]
    assert varying_settings([{"d_model": 64}, {"d_model": 128}]) == ["d_model=64", "d_model=128"]


def test_width_curves_take_the_best_point_per_label_and_width():
    from recallkit.report.width import has_width_axis, width_curves

    rows = [row("a", "attention", 64, 1e-3, 0.9), row("b", "attention", 128, 1e-3, 1.0),
            row("c", "h3", 64, 1e-3, 0.1), row("d", "h3", 128, 1e-3, 0.4), row("e", "h3", 128, 3e-3, 0.6),
            row("f", "h3", 64, 1e-3, 0.05, T=128)]
    points = frontier_points(rows)
    assert has_width_axis(points)
    curves = width_curves(points)
    assert curves["mqar T=64"] == {"attention": [(64, 0.9), (128, 1.0)], "h3": [(64, 0.1), (128, 0.6)]}
    assert curves["mqar T=128"] == {"h3": [(64, 0.05)]}
    assert not has_width_axis(frontier_points(rows[:1]))


def test_report_draws_the_width_figure_only_when_widths_vary(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        wide = tiny_run().model_dump()
        wide["model"]["d_model"] = 32
        configs = [tiny_run(), rk.RunConfig(**wide)]
        store.add(configs)
        for config in configs:
            store.record(config.run_id, {"status": "done", "metrics": {"accuracy": 0.5}, "state_size": 512,
                                         "num_params": 9, "wall_time": 1.5})
    _, page = write_report(tmp_path)
    assert (tmp_path / "width.png").stat().st_size > 0
    assert page.read_text().count("data:image/png;base64,") == 2


def test_dense_point_tags_do_not_overlap():
    import matplotlib.pyplot as plt

    from recallkit.report.frontier import _place_tags

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.set_xscale("log")
    ax.set_xlim(1e3, 1e5)
    ax.set_ylim(-0.03, 1.05)
    tags = [(3000 * 1.3**i, 0.96 + 0.005 * i, f"window={w} feature_dim={f}", "C0")
            for i, (w, f) in enumerate([(8, 4), (32, 4), (8, 8), (32, 8), (8, 16), (32, 16)])]
    _place_tags(ax, tags)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_read_twice_runs_share_the_panel_of_the_task_they_read():
    from recallkit.tasks import read_twice

    mqar = rk.make_task("mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    assert read_twice(mqar).setting == mqar.setting == "mqar T=16"
    causal, twice = row("a", "la", 64, 1e-3, 0.5), row("b", "la read-twice", 64, 1e-3, 0.8)
    causal["metrics"]["evals"] = [{"task": "mqar", "seq_len": 16, "setting": mqar.setting, "state_size": 10,
                                   "accuracy": 0.5}]
    twice["metrics"]["evals"] = [{"task": "read_twice", "seq_len": 24, "setting": mqar.setting,
                                  "state_size": 10, "accuracy": 0.8}]
    assert {p["panel"] for p in frontier_points([causal, twice])} == {"mqar T=16"}
    sd = rk.make_task("set_disjointness", vocab_size=64, seq_len=32, set_sizes=(16, 4))
    assert sd.setting == "set_disjointness |A|,|B|=16,4 T=32"
