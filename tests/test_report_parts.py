"""Parts of the report that mutation testing found unpinned: length curves, the length figure, slice
tables, compare, the learning-curve names and menu, and the width axis."""

from __future__ import annotations

import copy
import warnings

import pytest

from recallkit.report import compare, frontier_points
from recallkit.report.curves import curves_figure, run_names
from recallkit.report.length_curves import length_curves
from recallkit.report.lengths import length_figure
from recallkit.report.slices import slice_tables
from recallkit.report.width import has_width_axis
from tests.test_report import row, synthetic_sweep
from tests.test_report_settings import _length_row


def _at_lengths(run_id, evals, seed=0):
    out = _length_row(run_id, seed, (0.5, 0.5, 0.5))
    out["metrics"]["evals"] = [{"task": "copy", "seq_len": 16, "setting": "copy T=16", "state_size": 100,
                                "length_unit": "characters", "bits_per_unit": 2.0, **e} for e in evals]
    return out


def test_a_length_curve_plots_exact_match_not_token_accuracy():
    run = _at_lengths("a", [{"length": 8, "accuracy": 0.9, "exact_match": 0.4},
                            {"length": 16, "accuracy": 0.8, "exact_match": 0.1}])
    (curve,) = length_curves([run])
    assert [(length, accuracy) for length, accuracy, _ in curve["points"]] == [(8, 0.4), (16, 0.1)]


def test_one_length_evaluation_cannot_show_a_fixed_state_so_has_no_bound():
    one = _at_lengths("a", [{"length": 8, "accuracy": 0.9}])
    two = _at_lengths("b", [{"length": 8, "accuracy": 0.9}, {"length": 16, "accuracy": 0.5}])
    (curve,) = length_curves([one])
    assert not curve["fixed_state"] and curve["bound"] is None
    (curve,) = length_curves([two])
    assert curve["fixed_state"] and curve["bound"] == pytest.approx(100 * 32 / 2.0)


def test_the_length_curve_is_the_setting_with_the_best_mean_not_the_best_seed():
    lucky = [_length_row("l0", 0, (1.0, 1.0, 1.0)), _length_row("l1", 1, (0.0, 0.0, 0.0))]  # mean 0.5
    steady = [_length_row("s0", 0, (0.6, 0.6, 0.6)), _length_row("s1", 1, (0.6, 0.6, 0.6))]  # mean 0.6
    for run in steady:
        run["config"]["train"]["lr"] = 3e-3
    (curve,) = length_curves(lucky + steady)
    assert curve["lr"] == 3e-3 and curve["headline"] == pytest.approx(0.6)


def test_the_length_figure_error_bars_reach_the_interval():
    rows = [_length_row("r0", 0, (0.9, 0.6, 0.3)), _length_row("r1", 1, (0.7, 0.4, 0.1))]
    (curve,) = length_curves(rows)
    (trace,) = length_figure(rows).data
    means = [accuracy for _, accuracy, _ in curve["points"]]
    above = [high - m for m, (_, high) in zip(means, curve["interval"])]
    below = [m - low for m, (low, _) in zip(means, curve["interval"])]
    assert list(trace.error_y.array) == pytest.approx(above)
    assert list(trace.error_y.arrayminus) == pytest.approx(below)
    assert all(v >= 0 for v in (*trace.error_y.array, *trace.error_y.arrayminus))


def test_slice_tables_drop_one_valued_slices_and_sort_values_numerically():
    run = row("a", "attention", 64, 1e-3, 0.5)
    cell = {"accuracy": 0.5, "num_examples": 4}
    run["metrics"]["evals"] = [{"task": "mqar", "seq_len": 64, "state_size": 100, "accuracy": 0.5,
                                "slices": {"num_kv_pairs": {"8": cell},
                                           "length": {"16": cell, "2": cell, "4": cell}}}]
    (table,) = slice_tables([run], frontier_points([run]))
    assert table.name == "length" and table.values == ["2", "4", "16"]


def test_compare_labels_every_run_with_its_own_directory(tmp_path, monkeypatch):
    zeta, alpha = tmp_path / "zeta", tmp_path / "alpha"  # given in non-alphabetical order
    synthetic_sweep(zeta)  # with a failed and a pending run
    synthetic_sweep(alpha, failed=False)  # the same configs: the same run ids
    seen = {}
    monkeypatch.setattr(compare, "plot_frontier", lambda points, path, title: path)
    monkeypatch.setattr(compare, "write_html", lambda rows, points, path, *_: seen.setdefault("rows", rows))
    compare.write_compare([zeta, alpha])
    rows = seen["rows"]
    by_dir = {name: [r for r in rows if r["label"].startswith(f"{name}: ")] for name in ("zeta", "alpha")}
    assert len(by_dir["zeta"]) == 6 and len(by_dir["alpha"]) == 4
    assert {r["status"] for r in by_dir["zeta"]} > {r["status"] for r in by_dir["alpha"]} == {"done"}
    assert len({r["run_id"] for r in rows}) == len(rows)  # shared run ids are kept apart
    assert all(r["run_id"].startswith(r["label"].split(": ")[0] + ":") for r in rows)


def _curved(run_id, label, lr):
    out = row(run_id, label, 64, lr, 0.5)
    out["metrics"]["curve"] = [{"step": 10, "loss": 1.0, "accuracy": 0.5}]
    return out


def test_learning_curve_names_show_what_varies_within_a_label_and_the_menu_shows_one_label():
    rows = [_curved("a", "attention", 1e-3), _curved("b", "attention", 3e-3), _curved("c", "h3", 1e-2)]
    names = run_names(rows)
    assert names[2] == "h3"  # h3 has one run: nothing varies, one evaluation setting: no tag
    assert names[0] != names[1] and all(n.startswith("attention ") and "[" not in n for n in names[:2])
    figure = curves_figure(rows)
    buttons = {b.label: b.args[0]["visible"] for b in figure.layout.updatemenus[0].buttons}
    labels = [t.legendgroup for t in figure.data]
    assert buttons["h3"] == [group == "c" for group in labels]
    assert buttons["attention"] == [group in ("a", "b") for group in labels]


def test_a_pretrained_point_is_not_a_width():
    pretrained = row("p", "smollm2", 0, 1e-3, 0.7)
    trained = row("t", "attention", 64, 1e-3, 0.9)
    assert not has_width_axis(frontier_points([pretrained, trained]))
    wider = copy.deepcopy(trained)
    wider.update(run_id="w")
    wider["config"]["model"]["d_model"] = 128
    assert has_width_axis(frontier_points([pretrained, trained, wider]))


def test_a_length_curve_reads_only_its_headline_settings_evaluations():
    """An ``eval_tasks`` evaluation of another task (n-gram lookup, its own lengths) gave the copy
    curve points at L = 12 and 30."""
    from recallkit.report.length_curves import length_curve

    run = _length_row("a", 0, (0.9, 0.6, 0.3))
    main = {"task": "copy", "seq_len": 16, "setting": "copy T=16", "state_size": 100, "accuracy": 0.95,
            "exact_match": 0.95, "slices": {"length": {"4": {"accuracy": 0.99, "exact_match": 0.99}}}}
    other = {"task": "ngram_lookup", "seq_len": 40, "setting": "ngram_lookup (suffix) L=10-30",
             "state_size": 100, "accuracy": 0.1, "slices": {"length": {"12": {"accuracy": 0.05},
                                                                        "30": {"accuracy": 0.0}}}}
    run["metrics"]["evals"] = [main, other] + run["metrics"]["evals"]
    curve = length_curve(run)
    assert curve["panel"] == "copy T=16"
    assert [length for length, _, _ in curve["points"]] == [4, 8, 16, 32]


def test_each_panel_of_the_length_figure_names_its_own_unit():
    copy = _at_lengths("c", [{"length": 8, "accuracy": 0.9}, {"length": 16, "accuracy": 0.5}])
    book = _at_lengths("p", [{"length": 4, "accuracy": 0.9}, {"length": 8, "accuracy": 0.5}])
    for e in book["metrics"]["evals"]:
        e.update(task="phonebook", setting="phonebook N=4-8", length_unit="entries")
    figure = length_figure([copy, book])
    titles = {figure.layout[name].title.text for name in figure.layout if name.startswith("xaxis")}
    assert titles == {"length (characters)", "length (entries)"}


def test_the_page_s_frontier_table_names_each_point_by_what_sets_it_apart():
    """Two vocabularies of one task in one panel were two rows both named "attn"."""
    from dataclasses import replace

    from recallkit.report.common import FrontierPoint
    from recallkit.report.html import _frontier_tables

    base = FrontierPoint(panel="mqar T=32", label="attn", d_model=16, state_size=100, accuracy=0.5,
                         budget=None, prefill_tokens=None, lr=1e-3, run_id="r", num_params=1, wall_time=1.0,
                         runs=1, model={"vocab_size": 64, "d_model": 16}, task={"vocab_size": 64})
    wide = replace(base, d_model=32, model={"vocab_size": 64, "d_model": 32})
    other = replace(base, model={"vocab_size": 128, "d_model": 16}, task={"vocab_size": 128})
    page = _frontier_tables([base, wide, other])
    assert page.count("<td>attn vocab_size=64</td>") == 2 and page.count("<td>attn vocab_size=128</td>") == 1
    assert "d_model=" not in page


def test_compare_prefixes_the_run_a_halving_note_names():
    """The runs table of a comparison named a halted run's reference by its bare id, which two
    directories can share."""
    from recallkit.sweep.halving import halt_rule

    note = halt_rule({"curve": [(1, 0.9)], "label": "attn (a)", "lr": 0.01, "run_id": "0123456789abcdef"},
                     max_steps=4)(2, 0.1)
    halted = {**row("fedcba9876543210", "attn", 64, 0.001, 0.1), "metrics": {"halted": note}}
    [named] = compare.prefixed([halted], "sweep (b)")
    assert named["metrics"]["halted"].endswith("(0.900; run sweep (b):0123456789abcdef)")
    assert named["metrics"]["halted"].startswith("halving: accuracy 0.100 at step 2")
    assert halted["metrics"]["halted"] == note  # the row read from the store is not changed


def test_figure_labels_cut_long_labels_in_the_middle_and_keep_them_apart():
    from recallkit.report.common import LABEL_CHARS, figure_labels

    long = "attention with a long descriptive label " * 8
    labels = ["mamba", long + "(RoPE)", long + "(NoPE)", "x" * 30 + "1" + "y" * 30, "x" * 30 + "2" + "y" * 30]
    shown = figure_labels(labels)
    assert shown["mamba"] == "mamba"
    for label in labels[1:]:
        text = shown[label].removesuffix(" (2)")
        assert len(text) == LABEL_CHARS and "…" in text
        head, tail = text.split("…")
        assert label.startswith(head) and label.endswith(tail) and len(head) >= LABEL_CHARS // 2 - 1
    assert shown[long + "(RoPE)"].endswith("(RoPE)")  # the end tells variants apart
    assert len(set(shown.values())) == len(labels)  # equal once cut: the second gets " (2)"
    assert shown[labels[4]] == shown[labels[3]] + " (2)"


def test_legend_columns_fit_the_figure():
    from recallkit.report.common import legend_columns

    assert legend_columns(["mamba", "gla", "h3", "rwkv7"], 7.0, 7) == 3
    assert legend_columns(["mamba", "gla"], 7.0, 7) == 2
    assert legend_columns(["x" * 48] * 4, 7.0, 8) == 1  # 48 characters at 8 pt: 3 inches a column
    assert legend_columns(["x" * 300], 5.0, 8) == 1


@pytest.mark.parametrize("figure", ["frontier", "width", "capability"])
@pytest.mark.parametrize("word", ["attention ", "注意力机制"])  # wide characters take two columns each
def test_a_long_label_leaves_the_panels_their_size(tmp_path, monkeypatch, figure, word):
    """A 300-character label made frontier.png three times wider than its panels, cut the width
    figure's legend off (with the other entries beside it) and stretched the capability map to 27
    inches."""
    import matplotlib.pyplot as plt
    from matplotlib.image import imread

    from recallkit.report.capability import plot_capability_map
    from recallkit.report.common import LABEL_CHARS, text_width
    from recallkit.report.frontier import plot_frontier
    from recallkit.report.width import plot_width_curves

    draw = {"frontier": plot_frontier, "width": plot_width_curves, "capability": plot_capability_map}[figure]
    seen, close = [], plt.close
    monkeypatch.setattr(plt, "close", seen.append)

    def drawn(label: str, name: str):
        families = (label, "mamba", "gla", "rwkv7")
        rows = [row(f"{n}{d}{T}", family, d, 1e-3, 0.5 + d / 1000, T=T)
                for n, family in enumerate(families) for d in (16, 32) for T in (32, 64)]
        draw(frontier_points(rows), tmp_path / name)
        fig = seen.pop()
        return fig, imread(tmp_path / name).shape[1]

    (short, short_px), (long, long_px) = drawn(word, "short.png"), drawn(word * 30, "long.png")
    close(short)
    texts = [t.get_text() for legend in long.legends + [a.get_legend() for a in long.axes if a.get_legend()]
             for t in legend.get_texts()]
    texts += [t.get_text() for ax in long.axes for t in ax.get_yticklabels()]
    assert any("…" in text for text in texts) and max(map(text_width, texts)) <= LABEL_CHARS + 10
    assert long_px <= short_px + 3.5 * 130  # at most the cut label's room (dpi 130)
    renderer = long.canvas.get_renderer()
    for legend in long.legends:  # every entry inside the image, not cut off at its edges
        for text in legend.get_texts():
            with warnings.catch_warnings():  # the test font lacks CJK glyphs: boxes of their width
                warnings.simplefilter("ignore", UserWarning)
                box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= long.bbox.x1 + 1, text.get_text()
    close(long)