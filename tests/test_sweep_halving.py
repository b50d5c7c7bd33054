"""Halving of learning-rate grids (recallkit.sweep.halving, `recallkit run --halving`)."""

from __future__ import annotations

import pytest

import recallkit as rk
from recallkit.sweep.halving import MARGIN, group_key, halt_rule, order, reference
from recallkit.sweep.runner import run_sweep


def run(lr: float, seed: int = 0, label: str | None = None) -> rk.RunConfig:
    """2-pair MQAR that lr 1e-2 learns to ~0.55 in 20 steps while lr 1e-6 stays at ~0.12."""
    return rk.RunConfig(
        model=dict(vocab_size=16, d_model=32, num_layers=2, mlp="none",
                   mixer=dict(name="attention", position="rope")),
        task=dict(name="mqar", vocab_size=16, seq_len=8, num_kv_pairs=2), label=label,
        train={"max_steps": 80, "eval_every": 10, "batch_size": 32, "num_train_examples": 512, "lr": lr,
               "num_test_examples": 64, "warmup_steps": 2, "device": "cpu", "early_stop_accuracy": None,
               "seed": seed},
    )


def test_runs_that_differ_only_in_learning_rate_and_label_form_a_group():
    assert group_key(run(1e-2)) == group_key(run(1e-6, label="slow"))
    assert group_key(run(1e-2)) != group_key(run(1e-2, seed=1))
    a1, a2, b1, b2, a3 = run(1e-2), run(1e-3), run(1e-2, seed=1), run(1e-3, seed=1), run(1e-4)
    assert order([a1, a2, b1, b2, a3]) == [a1, b1, a2, b2, a3]  # one of each group before any second


def test_the_rule_stops_a_run_more_than_the_margin_below_the_reference_at_the_same_step():
    ref = {"run_id": "r", "label": "attention", "lr": 0.01, "accuracy": 0.9,
           "curve": [(10, 0.2), (20, 0.6), (30, 0.9)]}
    rule = halt_rule(ref, max_steps=40)
    assert rule(5, 0.0) is None  # before a quarter of the steps nothing stops
    assert rule(10, 0.0) is None and rule(10, 0.2 - MARGIN + 0.01) is None
    assert rule(20, 0.6 - MARGIN + 0.01) is None
    reason = rule(20, 0.6 - MARGIN - 0.01)
    assert reason.startswith("halving: accuracy 0.340 at step 20") and "lr=0.01 (0.600; run r)" in reason
    assert rule(35, 0.9 - MARGIN - 0.01) is not None  # past the reference's curve: its last value
    assert rule(35, 0.9 - MARGIN + 0.01) is None
    assert rule(40, 0.0) is None  # the last step: the run trained in full, whatever its accuracy


def test_a_gap_of_exactly_the_margin_is_not_behind():
    """"More than 0.25 below" was decided by float32 rounding for gaps of exactly 0.25 (125 of 697
    pairs k/n apart by a quarter were halted). Reference: halted iff (target - accuracy) > margin in
    exact fractions."""
    from fractions import Fraction

    import numpy as np

    for n in (40, 64, 96, 320):
        for k in range(n // 4, n + 1):
            target, accuracy = np.float32(k / n), np.float32((k - n // 4) / n)
            rule = halt_rule({"run_id": "r", "label": "x", "lr": 0.1, "accuracy": float(target),
                              "curve": [(10, float(target))]}, max_steps=40)
            exact_gap = Fraction(k, n) - Fraction(k - n // 4, n)
            assert (rule(20, float(accuracy)) is not None) == (exact_gap > Fraction(MARGIN)), (k, n)


def test_the_reference_is_the_best_finished_unhalted_sibling():
    rows = [{"run_id": rid, "status": status, "label": "x", "config": run(lr).model_dump(mode="json"),
             "metrics": {"accuracy": acc, "curve": [{"step": 10, "accuracy": acc}], **extra}}
            for rid, lr, status, acc, extra in [("a", 1e-2, "done", 0.5, {}), ("b", 2e-2, "done", 0.7, {}),
                                                ("c", 3e-2, "done", 0.9, {"halted": "halving: ..."}),
                                                ("d", 4e-2, "running", 0.95, {}),
                                                ("e", 1e-2, "done", 0.99, {})]]
    rows[-1]["config"] = run(1e-2, seed=1).model_dump(mode="json")  # another group
    ref = reference(run(1e-6), rows)
    assert (ref["run_id"], ref["lr"], ref["curve"], ref["accuracy"]) == ("b", 2e-2, [(10, 0.7)], 0.7)
    assert reference(run(1e-6, seed=2), rows) is None


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_sweep_with_halving_stops_the_run_far_behind_its_sibling_and_says_why(tmp_path, executor):
    good, slow = run(1e-2), run(1e-6)  # the sweep's order: the group's first member trains in full
    rows = run_sweep([good, slow], tmp_path / "halving", executor=executor, workers=1, quiet=True,
                     halving=True)
    by_id = {row["run_id"]: row for row in rows}
    assert by_id[good.run_id]["metrics"]["steps"] == 80 and "halted" not in by_id[good.run_id]["metrics"]
    stopped = by_id[slow.run_id]
    assert stopped["status"] == "done" and stopped["metrics"]["steps"] == 20  # a quarter of its 80 steps
    halted = stopped["metrics"]["halted"]
    assert halted.startswith("halving: accuracy") and good.run_id in halted
    if executor == "serial":  # without halving both run in full
        plain = run_sweep([good, slow], tmp_path / "plain", quiet=True)
        assert all(row["metrics"]["steps"] == 80 and "halted" not in row["metrics"] for row in plain)


def test_halving_refuses_the_ray_executor(tmp_path):
    with pytest.raises(ValueError, match="halving needs the serial or process executor"):
        run_sweep([run(1e-2)], tmp_path, executor="ray", halving=True)
