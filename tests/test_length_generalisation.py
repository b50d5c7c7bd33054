"""Length generalisation: eval_lengths in the run config, per-length evaluations, the lengths figure."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

import recallkit as rk
from recallkit.report.length_curves import BITS_PER_NUMBER, length_curves, plot_length_curves
from recallkit.report.lengths import length_figure
from recallkit.sweep.store import Store

COPY = dict(name="copy", vocab_size=32, seq_len=23, alphabet_size=26, min_len=1, max_len=10)


def copy_run(mixer: dict, **fields) -> rk.RunConfig:
    return rk.RunConfig(label=mixer["name"],
        model=dict(vocab_size=32, d_model=16, num_layers=1, mixer=mixer), task=COPY,
        train=dict(max_steps=2, batch_size=4, num_train_examples=16, num_test_examples=12), **fields,
    )


def test_eval_lengths_evaluate_the_headline_task_at_each_length():
    result = rk.train(copy_run({"name": "attention"}, eval_lengths=[3, 30]))
    evals = result.metrics["evals"]
    at = {e["length"]: e for e in evals if "length" in e}
    assert set(at) == {3, 30}
    assert at[30]["seq_len"] == 63 and at[30]["slices"]["length"] == {"30": at[30]["slices"]["length"]["30"]}
    assert at[30]["state_size"] == result.model.state_size(63) > at[3]["state_size"]  # a KV cache grows
    assert {"exact_match", "greedy_exact_match"} <= set(at[3])
    assert at[3]["length_unit"] == "characters" and at[30]["bits_per_unit"] == pytest.approx(math.log2(26))
    assert result.metrics["train_length_range"] == [1, 10]
    assert evals[0]["setting"] == at[3]["setting"] == "copy L=1-10 D=26"


def test_eval_lengths_leave_the_run_id_alone_when_unused_and_are_validated():
    plain = copy_run({"name": "attention"})
    assert "eval_lengths" not in json.loads(plain.canonical_json())
    assert copy_run({"name": "attention"}, eval_lengths=[40]).run_id != plain.run_id
    mqar = dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    with pytest.raises(ValidationError, match="eval_lengths needs a task with a length axis"):
        rk.RunConfig(model=dict(vocab_size=32, d_model=16, mixer={"name": "attention"}), task=mqar,
                     eval_lengths=[4])
    with pytest.raises(ValidationError, match="must be >= 1"):
        copy_run({"name": "attention"}, eval_lengths=[0])
    learned = dict(vocab_size=32, d_model=16, mixer={"name": "attention"}, max_position=32)
    with pytest.raises(ValidationError, match="seq_len=63 exceeds model.max_position=32"):
        rk.RunConfig(model=learned, task=COPY, eval_lengths=[30])


def _stored_rows(tmp_path, runs):
    with Store(tmp_path / "results.sqlite") as store:
        store.add([config for config, _ in runs])
        for config, result in runs:
            store.record(config.run_id, {"status": result.status, "metrics": result.metrics,
                                         "state_size": result.state_size, "num_params": result.num_params,
                                         "wall_time": result.wall_time})
        return store.rows()


def _without_length_axis(row: dict) -> dict:
    """The row as stored before length evaluations carried ``length_unit`` and ``bits_per_unit``."""
    evals = [{k: v for k, v in e.items() if k not in ("length_unit", "bits_per_unit")}
             for e in row["metrics"]["evals"]]
    return {**row, "metrics": {**row["metrics"], "evals": evals}}


def test_length_curves_mark_the_information_bound_of_fixed_state_models(tmp_path):
    runs = [(c, rk.train(c)) for c in (copy_run({"name": "attention"}, eval_lengths=[5, 20, 40]),
                                        copy_run({"name": "mamba"}, eval_lengths=[5, 20, 40]),
                                        copy_run({"name": "attention"}))]  # no lengths: no curve
    curves = {c["label"]: c for c in length_curves(_stored_rows(tmp_path, runs))}
    assert set(curves) == {"attention", "mamba"}
    attention, mamba = curves["attention"], curves["mamba"]
    lengths = [p[0] for p in attention["points"]]  # the headline's length slices + the dedicated lengths
    assert lengths == sorted(set(lengths)) and {5, 20, 40} <= set(lengths)
    assert len(lengths) > 3 and all(1 <= length <= 10 for length in set(lengths) - {20, 40})
    assert attention["train_range"] == [1, 10] and attention["unit"] == "characters"
    assert not attention["fixed_state"] and attention["bound"] is None
    assert mamba["fixed_state"]
    state = mamba["points"][-1][2]
    assert mamba["bound"] == pytest.approx(state * BITS_PER_NUMBER / math.log2(26))
    old = [_without_length_axis(row) for row in _stored_rows(tmp_path, [])]
    stale = {c["label"]: c for c in length_curves(old)}["mamba"]
    assert stale["bound"] is None and stale["unit"] == "length" and stale["points"] == mamba["points"]
    png = plot_length_curves(list(curves.values()), tmp_path / "lengths.png")
    assert png.stat().st_size > 10_000
    figure = length_figure(_stored_rows(tmp_path, []))
    assert figure is not None and {t.name for t in figure.data} == {"attention d=16", "mamba d=16"}
    assert length_figure([]) is None


def test_seeds_of_one_setting_become_one_mean_curve_with_an_interval(tmp_path):
    # three seeds of one run, and a second learning rate at one seed that scores worse on average
    seeds = [copy_run({"name": "attention"}, eval_lengths=[5, 20]).model_copy(
        update={"train": rk.TrainConfig(max_steps=30, batch_size=4, num_train_examples=16,
                                        num_test_examples=12, seed=seed)}) for seed in (0, 1, 2)]
    runs = [(c, rk.train(c)) for c in seeds]
    rows = _stored_rows(tmp_path, runs)
    (curve,) = length_curves(rows)
    per_seed = [length_curves([row])[0] for row in rows]  # each seed alone: its own curve
    for i, (length, accuracy, _) in enumerate(curve["points"]):
        values = [dict((p[0], p[1]) for p in c["points"])[length] for c in per_seed]
        assert curve["seeds"][i] == values and accuracy == pytest.approx(sum(values) / 3)
        low, high = curve["interval"][i]
        assert min(values) <= low <= accuracy <= high <= max(values)
    assert curve["headline"] == pytest.approx(sum(c["headline"] for c in per_seed) / 3)
    assert all(c["interval"] == [] and c["seeds"] == [] for c in per_seed)
    png = plot_length_curves([curve], tmp_path / "lengths.png")
    assert png.stat().st_size > 10_000
    (trace,) = length_figure(rows).data
    assert trace.error_y.array is not None and "3 seeds" in trace.name
