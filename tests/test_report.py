"""Frontier points (best lr per model and width) and the self-contained HTML page."""

from __future__ import annotations

import re
from pathlib import Path

import recallkit as rk
from recallkit.report import frontier_points, write_compare, write_report
from recallkit.sweep import Store
from tests.conftest import tiny_run


def synthetic_sweep(directory: Path, failed: bool = True) -> list[rk.RunConfig]:
    """A results store without training: two families at two widths (curves, slices, a ``length``
    slice over the training range 8-16 and evaluations at lengths 32 and 64), plus a failed and a
    pending run when ``failed``."""
    configs = []
    for mixer in ("attention", "linear_attention"):
        for d_model in (16, 32):
            config = tiny_run().model_dump()
            config["model"].update(d_model=d_model, mixer={"name": mixer})
            configs.append(rk.RunConfig(**config))
    broken = [tiny_run(lr=3e-3), tiny_run(lr=1e-2)] if failed else []
    with Store(directory / "results.sqlite") as store:
        store.add(configs + broken)
        for i, config in enumerate(configs):
            accuracy = 0.5 + 0.1 * i
            lengths = {str(n): {"accuracy": accuracy * 8 / n, "token_accuracy": 0.5, "num_examples": 8}
                       for n in (8, 16)}
            beyond = [{"task": "mqar", "seq_len": 2 * n, "setting": "mqar T=16", "length": n,
                       "state_size": 100,
                       "accuracy": accuracy * 8 / n, "token_accuracy": 0.5, "num_examples": 8}
                      for n in (32, 64)]
            pairs = {str(n): {"accuracy": accuracy - 0.1 * j, "token_accuracy": 0.5, "num_examples": 16}
                     for j, n in enumerate((2, 4))}
            slices = {"num_kv_pairs": pairs, "length": lengths}
            headline = {"accuracy": accuracy, "token_accuracy": accuracy, "num_examples": 32,
                        "slices": slices}
            metrics = {**headline, "steps": 20, "train_length_range": [8, 16],
                       "curve": [{"step": 10, "loss": 3.0 - i * 0.1, "accuracy": 0.2},
                                 {"step": 20, "loss": 1.0 - i * 0.1, "accuracy": accuracy}],
                       "evals": [{"task": "mqar", "seq_len": 16, "setting": "mqar T=16",
                                  "state_size": 100 * (i + 1),
                                  **headline}, *beyond]}
            store.record(config.run_id, {"status": "done", "metrics": metrics, "state_size": 100 * (i + 1),
                                         "num_params": 9, "wall_time": 1.5})
        if broken:
            store.record(broken[0].run_id,
                         {"status": "failed", "error": "RuntimeError: out of <memory>\ntrace"})
    return configs + broken


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
    points = {(p.panel, p.d_model): p for p in frontier_points(rows)}
    assert points[("mqar T=64", 64)].accuracy == 0.9 and points[("mqar T=64", 64)].lr == 3e-3
    assert points[("mqar T=64", 64)].runs == 2  # the failed run is left out
    assert points[("mqar T=64", 128)].accuracy == 0.95
    assert points[("mqar T=128", 64)].accuracy == 1.0
    assert len(points) == 3


def test_plotly_shows_labels_literally_and_offers_no_cloud_upload():
    from recallkit.report.embed import CONFIG
    from recallkit.report.interactive import frontier_figure

    rows = [row("a", "ours <i>v2</i> & [x]", 64, 1e-3, 0.5)]
    figure = frontier_figure(frontier_points(rows), rows)
    trace = figure.data[0]
    assert trace.name == "ours &lt;i&gt;v2&lt;/i&gt; &amp; [x]"  # plotly decodes the entities back
    assert trace.hovertext[0].startswith("<b>ours &lt;i&gt;v2&lt;/i&gt; &amp; [x]</b>")
    assert CONFIG["showSendToCloud"] is False  # plotly.js 4's default shares charts to cloud.plotly.com


def test_report_on_an_empty_sweep_renders_with_a_message(tmp_path):
    Store(tmp_path / "results.sqlite").close()
    png, page = write_report(tmp_path)
    assert png.stat().st_size > 0
    html = page.read_text()
    assert "No finished runs yet" in html and html.rstrip().endswith("</html>")
    assert "plotly.js v" not in html  # nothing to plot: the page stays small


def test_report_on_a_partially_failed_sweep_says_so_and_plots_the_rest(tmp_path):
    synthetic_sweep(tmp_path)
    _, page = write_report(tmp_path)
    html = page.read_text()
    assert "Failed runs: 1 of 6, left out of the figures" in html
    assert "RuntimeError: out of &lt;memory&gt;" in html
    assert "Unfinished runs: 1 of 6" in html
    assert 'id="frontier-plot"' in html and 'data-status="failed"' in html
    assert '<input type="checkbox" value="failed" checked> failed (1)' in html


def test_report_with_only_failed_and_pending_runs_explains_the_empty_frontier(tmp_path):
    configs = [tiny_run(), tiny_run(lr=3e-3)]
    with Store(tmp_path / "results.sqlite") as store:
        store.add(configs)
        store.record(configs[0].run_id, {"status": "failed", "error": "ValueError: bad\ntraceback"})
    _, page = write_report(tmp_path)
    html = page.read_text()
    assert "No finished runs yet: 1 of 2 runs are pending or running and 1 failed" in html
    assert "ValueError: bad" in html and 'id="frontier-plot"' not in html


def test_report_is_one_self_contained_page_with_plotly_embedded_once(tmp_path):
    synthetic_sweep(tmp_path)
    _, page = write_report(tmp_path)
    html = page.read_text()
    assert html.count("* plotly.js v") == 1
    assert not re.search(r"""<(script|img|link|iframe)[^>]+(src|href)=["']?(https?:)?//""", html)
    for plot in ("frontier-plot", "length-plot", "curves-plot"):
        assert html.count(f'id="{plot}"') == 1
    assert 3e6 < len(html) < 6e6


def test_frontier_hover_shows_the_run_config_and_the_eviction_policy():
    from recallkit.report.interactive import frontier_figure

    plain, evicted = row("a", "attention", 64, 1e-3, 0.9), row("b", "attention", 64, 1e-3, 0.8)
    plain["config"]["model"]["mixer"] = {"name": "attention", "window": None, "position": "rope"}
    evicted["metrics"]["evals"] = [
        {"task": "mqar", "seq_len": 64, "state_size": 100, "accuracy": 0.8},
        {"task": "mqar", "seq_len": 64, "state_size": 25, "accuracy": 0.4, "policy": "h2o", "budget": 0.25,
         "budget_tokens": 16, "mode": "prefill", "policy_config": {"name": "h2o", "recent_ratio": 0.5}},
    ]
    figure = frontier_figure(frontier_points([plain, evicted]), [plain, evicted])
    hovers = {trace.name + str(i): trace.hovertext for i, trace in enumerate(figure.data)}
    text = " ".join(" ".join(h) for h in hovers.values())
    assert "mixer: attention position=rope" in text and "window" not in text  # None = default, left out
    assert "task: mqar seq_len=64" in text and "train: lr=0.001" in text and "run a" in text
    assert "policy: h2o budget=0.25 (16 tokens) mode=prefill recent_ratio=0.5" in text
    panels = [annotation.text for annotation in figure.layout.annotations]
    assert panels == ["mqar T=64", "mqar T=64, KV eviction (prefill)"]
    groups = {trace.legendgroup for trace in figure.data}
    assert groups == {"attention", "attention [h2o]"}  # one legend group per family: a click toggles it
    assert sum(bool(trace.showlegend) for trace in figure.data) == 2


def test_slice_tables_show_multi_valued_slices_per_model(tmp_path):
    from recallkit.report.load import read_rows
    from recallkit.report.slices import slice_tables

    synthetic_sweep(tmp_path)
    rows = read_rows(tmp_path)
    tables = {table.name: table for table in slice_tables(rows, frontier_points(rows))}
    assert set(tables) == {"num_kv_pairs", "length"}
    pairs = tables["num_kv_pairs"]
    assert pairs.panel == "mqar T=16" and pairs.values == ["2", "4"]
    assert [name for name, _ in pairs.rows] == ["attention d_model=16", "attention d_model=32",
                                                "linear_attention(taylor) d_model=16",
                                                "linear_attention(taylor) d_model=32"]
    assert pairs.rows[1][1]["4"]["accuracy"] == 0.5
    assert "mqar T=16: accuracy per num_kv_pairs" in write_report(tmp_path)[1].read_text()


def test_learning_curves_have_a_legend_entry_per_run_and_a_family_menu(tmp_path):
    from recallkit.report.curves import curves_figure
    from recallkit.report.load import read_rows

    synthetic_sweep(tmp_path)
    figure = curves_figure(read_rows(tmp_path))
    assert len(figure.data) == 8 and sum(bool(t.showlegend is not False) for t in figure.data) == 4
    assert [button.label for button in figure.layout.updatemenus[0].buttons] == [
        "all models", "attention", "linear_attention(taylor)"]
    assert curves_figure([]) is None


def test_compare_puts_two_directories_on_one_frontier(tmp_path):
    first, second = tmp_path / "cpu", tmp_path / "gpu"
    synthetic_sweep(first)
    synthetic_sweep(second, failed=False)  # the same configs: the same run ids in both
    png, page = write_compare([first, second])
    assert (png, page) == (first / "compare.png", first / "compare.html") and png.stat().st_size > 0
    html = page.read_text()
    assert "recallkit: cpu vs gpu" in html and "cpu: attention" in html and "gpu: attention" in html
    assert html.count('" data-status="') == 6 + 4  # every run of both, each in one table row
    assert not (first / "report.html").exists()  # a comparison leaves the directory's own report alone
    elsewhere = tmp_path / "out"
    assert write_compare([first, second], elsewhere)[1] == elsewhere / "compare.html"


def test_compare_names_clashing_directories_by_their_parent(tmp_path):
    from recallkit.report.compare import source_names

    assert source_names([tmp_path / "a" / "run", tmp_path / "b" / "run"]) == ["a/run", "b/run"]


def test_report_command_compares_and_errors_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from recallkit.cli import app

    first, second, empty = tmp_path / "first", tmp_path / "second", tmp_path / "empty"
    synthetic_sweep(first)
    synthetic_sweep(second, failed=False)
    empty.mkdir()
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(first), str(second), "--out", str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "both" / "compare.html").exists() and (tmp_path / "both" / "compare.png").exists()
    result = runner.invoke(app, ["report", str(first), "--out", str(tmp_path / "single")])
    assert result.exit_code == 0 and (tmp_path / "single" / "report.html").exists()
    for args, message in (([str(first), str(tmp_path / "missing")], "is not a directory"),
                          ([str(first), str(empty)], "no results database"),
                          ([str(first), str(first)], "given twice")):
        result = runner.invoke(app, ["report", *args])
        assert (result.exit_code == 1 and result.output.count("\n") == 1
                and message in result.output), result.output


def test_report_embeds_the_figure_and_lists_runs(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        config = tiny_run()
        store.add([config])
        store.record(config.run_id, {"status": "done", "metrics": {"accuracy": 0.5, "token_accuracy": 0.5},
                                     "state_size": 512, "num_params": 9, "wall_time": 1.5})
    _, page = write_report(tmp_path)
    html = page.read_text()
    assert "data:image/png;base64," in html and config.run_id in html and "512" in html


def test_a_run_evaluated_at_two_lengths_gives_a_point_in_each_panel():
    r = row("a", "attention", 64, 1e-3, 0.9)
    r["metrics"]["evals"] = [
        {"task": "mqar", "seq_len": 64, "state_size": 100, "accuracy": 0.9},
        {"task": "mqar", "seq_len": 128, "state_size": 200, "accuracy": 0.7},
    ]
    points = frontier_points([r])
    assert [(p.panel, p.state_size, p.accuracy) for p in points] == [
        ("mqar T=64", 100, 0.9), ("mqar T=128", 200, 0.7)
    ]


def test_varying_settings_names_only_what_differs():
    from recallkit.report.common import varying_settings

    models = [
        {"d_model": 64,
         "mixer": [{"name": "attention", "window": 8}, {"name": "linear_attention", "feature_dim": 4}]},
        {"d_model": 64,
         "mixer": [{"name": "attention", "window": 32}, {"name": "linear_attention", "feature_dim": 4}]},
        {"d_model": 64,
         "mixer": [{"name": "attention", "window": 8}, {"name": "linear_attention", "feature_dim": 16}]},
    ]
    assert varying_settings(models) == ["window=8 feature_dim=4", "window=32 feature_dim=4",
                                        "window=8 feature_dim=16"]
    assert varying_settings([{"d_model": 64}, {"d_model": 128}]) == ["d_model=64", "d_model=128"]


def test_varying_settings_name_each_setting_once_and_unambiguously():
    from recallkit.report.common import varying_settings

    vocab = [{"vocab_size": v, "d_model": 8, "task": {"vocab_size": v}} for v in (64, 128)]
    assert varying_settings(vocab) == ["vocab_size=64", "vocab_size=128"]  # not "vocab_size=64 vocab_size=64"
    model_only = [{"vocab_size": 128, "task": {"vocab_size": v}} for v in (64, 128)]
    assert varying_settings(model_only) == ["vocab_size=64", "vocab_size=128"]
    apart = [{"vocab_size": 128, "task": {"vocab_size": 64}}, {"vocab_size": 256, "task": {"vocab_size": 64}},
             {"vocab_size": 256, "task": {"vocab_size": 128}}]
    assert varying_settings(apart) == ["vocab_size=128 task.vocab_size=64",
                                       "vocab_size=256 task.vocab_size=64",
                                       "vocab_size=256 task.vocab_size=128"]
    hybrid = [{"mixer": [{"window": a}, {"window": b}]} for a, b in ((8, 8), (8, 16), (16, 16))]
    assert varying_settings(hybrid) == ["0.window=8 1.window=8", "0.window=8 1.window=16",
                                        "0.window=16 1.window=16"]
    layers = [{"mixer": [{"window": w}, {"window": w}, {"window": w // 2}]} for w in (8, 16)]
    assert varying_settings(layers) == ["0.window=8 1.window=8 2.window=4",  # each layer named, even
                                        "0.window=16 1.window=16 2.window=8"]  # when two agree
    widths = [{"d_model": w, "vocab_size": v} for w, v in ((64, 8), (128, 16))]
    assert varying_settings(widths, omit=("d_model",)) == ["vocab_size=8", "vocab_size=16"]
    missing = [{"task": {}}, {"task": {"num_kv_pairs": 4}}]
    assert varying_settings(missing) == ["", "num_kv_pairs=4"]  # not "num_kv_pairs=None"


def test_width_curves_take_the_best_point_per_label_and_width():
    from recallkit.report.width import has_width_axis, width_curves

    rows = [row("a", "attention", 64, 1e-3, 0.9), row("b", "attention", 128, 1e-3, 1.0),
            row("c", "h3", 64, 1e-3, 0.1), row("d", "h3", 128, 1e-3, 0.4), row("e", "h3", 128, 3e-3, 0.6),
            row("f", "h3", 64, 1e-3, 0.05, T=128)]
    points = frontier_points(rows)
    assert has_width_axis(points)
    curves = {panel: {label: [(p.d_model, p.accuracy) for p in line] for label, line in lines.items()}
              for panel, lines in width_curves(points).items()}
    assert curves["mqar T=64"] == {"attention": [(64, 0.9), (128, 1.0)], "h3": [(64, 0.1), (128, 0.6)]}
    assert curves["mqar T=128"] == {"h3": [(64, 0.05)]}
    assert not has_width_axis(frontier_points(rows[:1]))


def test_width_curves_prefer_the_point_with_more_seeds():
    from recallkit.report.width import width_curves

    def variant(run_id, seed, accuracy, chunk):
        out = row(run_id, "mamba", 64, 1e-3, accuracy)
        out["config"]["model"]["mixer"] = {"name": "mamba", "chunk_size": chunk}
        out["config"]["train"]["seed"] = seed
        return out

    three = [variant(f"s{seed}", seed, a, 64) for seed, a in enumerate([0.2, 0.3, 0.4])]  # mean 0.3
    one = variant("lucky", 0, 0.5, 32)  # another setting of the same label, at one seed
    points = frontier_points(three + [one])
    assert len(points) == 2
    (line,) = width_curves(points)["mqar T=64"].values()
    assert [(round(p.accuracy, 6), len(p.seeds)) for p in line] == [(0.3, 3)]
    one_each = frontier_points([three[0], one])  # equal seed counts: the higher accuracy
    assert [p.accuracy for p in width_curves(one_each)["mqar T=64"]["mamba"]] == [0.5]


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
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page.read_text())) == 2


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


def test_a_tag_at_the_side_of_a_panel_is_drawn_inside_it():
    import matplotlib.pyplot as plt

    from recallkit.report.frontier import _place_tags

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.set_xscale("log")
    ax.set_xlim(1e3, 1e5)
    ax.set_ylim(-0.03, 1.05)
    _place_tags(ax, [(9.5e4, 0.99, "d_model=128", "C0"), (1.05e3, 0.01, "d_model=64", "C1")])
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 2
    assert all(inside.x0 <= b.x0 and b.x1 <= inside.x1 for b in boxes)
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
    assert {p.panel for p in frontier_points([causal, twice])} == {"mqar T=16"}
    sd = rk.make_task("set_disjointness", vocab_size=64, seq_len=32, set_sizes=(16, 4))
    assert sd.setting == "set_disjointness |A|,|B|=16,4 T=32"


def test_a_crowded_tag_is_left_out_rather_than_drawn_over_another():
    import matplotlib.pyplot as plt

    from recallkit.report.frontier import TAG_OFFSETS, _place_tags

    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.set_xscale("log")
    ax.set_xlim(1e3, 1e5)
    tags = [(3000.0, 0.5, f"window={w}", "C0") for w in range(len(TAG_OFFSETS) + 5)]  # all at one point
    _place_tags(ax, tags)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert 0 < len(boxes) < len(tags)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_many_families_get_distinct_colours():
    from recallkit.report.common import palette

    for count in (5, 15, 25, 60):
        colors = palette([f"family{i}" for i in range(count)])
        assert len(set(colors.values())) == count


def test_line_groups_split_evenly_and_keep_the_sorted_order():
    from recallkit.report.frontier import MAX_LINES, _line_groups

    labels = [f"f{i:02d}" for i in range(25)]
    groups = _line_groups(labels)
    assert [len(g) for g in groups] == [7, 6, 6, 6] and sum(groups, []) == labels
    assert _line_groups(labels[:MAX_LINES]) == [labels[:MAX_LINES]]
    assert _line_groups([]) == [[]]


def _points(families: int, panel: str = "mqar T=64") -> list:
    from recallkit.report.common import FrontierPoint

    return [FrontierPoint(panel=panel, label=f"family{f:02d}", d_model=64, state_size=1000 * (f + 1) * 2**h,
                          accuracy=0.5, budget=None, prefill_tokens=None, lr=1e-3, run_id=f"{f}-{h}",
                          num_params=1, wall_time=1.0, runs=1, model={"mixer": {"num_heads": 2**h}})
            for f in range(families) for h in range(2)]


def test_a_setting_with_many_families_is_split_over_panels_with_their_own_legends(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from recallkit.report import frontier

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to inspect it
    frontier.plot_frontier(_points(25), tmp_path / "many.png")
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [f"mqar T=64 ({i}/4)" for i in range(1, 5)]
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in axes]
    assert sum(legends, []) == [f"family{f:02d}" for f in range(25)]
    assert all(len(ax.lines) >= 25 for ax in axes)  # every panel draws the others' lines in grey
    assert not figures[0].legends
    frontier.plot_frontier(_points(8), tmp_path / "few.png")
    axes = [ax for ax in figures[1].axes if ax.get_visible()]
    assert len(axes) == 1 and axes[0].get_legend() is None and len(figures[1].legends) == 1


def test_the_width_figure_names_every_family_in_the_frontiers_colours(tmp_path, monkeypatch):
    """A family absent from the last panel is still in the legend, and a pretrained label (no width)
    does not shift the trained families' colours away from frontier.png's."""
    import matplotlib.figure

    from recallkit.report.common import palette
    from recallkit.report.width import plot_width_curves

    rows = [row("b1", "B", 32, 1e-3, 0.5), row("b2", "B", 64, 1e-3, 0.7), row("c1", "C", 32, 1e-3, 0.3),
            row("c2", "C", 64, 1e-3, 0.4), row("c3", "C", 32, 1e-3, 0.2, T=128),
            row("c4", "C", 64, 1e-3, 0.3, T=128), row("a", "A", 0, None, 0.9)]
    points = frontier_points(rows)
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda figure, path, *a, **k: saved.append(figure) or Path(path).touch())
    plot_width_curves(points, tmp_path / "width.png")
    (legend,) = saved[0].legends  # below the panels, not over the last one's data
    assert [t.get_text() for t in legend.get_texts()] == ["B", "C"]
    colors = palette([p.label for p in points])
    assert [tuple(h.get_color()) if isinstance(h.get_color(), tuple) else h.get_color()
            for h in legend.legend_handles] == [colors["B"], colors["C"]]


def test_a_point_with_no_state_is_named_where_the_log_axis_cannot_draw_it(tmp_path, monkeypatch):
    """Both figures' x axes are log scale, which drops state 0 without a word; each panel says so."""
    import matplotlib.pyplot as plt

    from recallkit.report import frontier
    from recallkit.report.interactive import frontier_figure

    rows = [row("a", "stateless", 64, 1e-3, 0.25, state=0), row("b", "attention", 64, 1e-3, 0.9)]
    points = frontier_points(rows)
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    frontier.plot_frontier(points, tmp_path / "f.png")
    texts = [t.get_text().replace("\n", " ") for ax in figures[0].axes for t in ax.texts]
    assert texts == ["not on the log axis: stateless: 0.250 at state 0"]
    notes = [a.text for a in frontier_figure(points, rows).layout.annotations if "log axis" in a.text]
    assert notes == ["not on the log axis: stateless: 0.250 at state 0"]
    frontier.plot_frontier(frontier_points(rows[1:]), tmp_path / "g.png")
    assert not [t for ax in figures[1].axes for t in ax.texts]


def test_labels_are_drawn_as_written_never_as_mathtext(tmp_path, monkeypatch):
    """``$\\frobnicate$`` in a label failed the whole report (matplotlib parsed it as a formula, and the
    error's first line was blank); ``$\\alpha$`` was typeset as a Greek letter."""
    import warnings

    import matplotlib.pyplot as plt

    from recallkit.report import frontier

    rows = [row("a", "cost $\\frobnicate$ model", 64, 1e-3, 0.5),
            row("b", "$\\alpha$ x 注意力", 64, 1e-3, 0.6)]
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning per glyph the font lacks
        frontier.plot_frontier(frontier_points(rows), tmp_path / "f.png")
    (legend,) = figures[0].legends
    assert [t.get_text() for t in legend.get_texts()] == ["$\\alpha$ x 注意力", "cost $\\frobnicate$ model"]
    assert not any(t.get_parse_math() for t in legend.get_texts())
    assert (tmp_path / "f.png").stat().st_size > 0


def test_an_error_message_shows_its_first_non_blank_line():
    from recallkit.errors import first_line

    assert first_line("\nUnknown symbol: \\frobnicate\n  ^") == "Unknown symbol: \\frobnicate"
    assert first_line("") == "unknown error" and first_line("  \n", "none") == "none"


def test_one_run_evaluated_plain_and_read_twice_gives_two_named_points():
    """Both evaluations share the panel of the task they read: untagged, they were two 'la' rows the
    PNG joined with a line, as if a state sweep."""
    run = row("a", "la", 64, 1e-3, 0.5)
    run["metrics"]["evals"] = [
        {"task": "mqar", "seq_len": 16, "setting": "mqar T=16", "state_size": 10, "accuracy": 0.5},
        {"task": "read_twice", "seq_len": 24, "setting": "mqar T=16", "state_size": 12, "accuracy": 0.8}]
    points = frontier_points([run])
    assert sorted((p.label, p.accuracy) for p in points) == [("la", 0.5), ("la [read twice]", 0.8)]
    run["metrics"]["evals"].reverse()  # trained read twice, evaluated once as well
    assert sorted(p.label for p in frontier_points([run])) == ["la", "la [read once]"]
