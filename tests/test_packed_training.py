"""Packed training (recallkit.packed_training): each member of a pack trains exactly as its run alone.

The reference is ``rk.train`` itself, run once per member, in float64 (the packed kernels take their
exact forms under vmap, the unpacked ones their GEMM forms: float64 keeps their difference far below
a defect over 50 steps of AdamW).
"""

from __future__ import annotations

import math

import pytest
import torch

import recallkit as rk
from recallkit.packed_training import pack_key, train_packed
from recallkit.training import initial_model, train
from tests.cases import CASES

FIRST_CASE = {key: kwargs for key, kwargs in reversed(CASES)}  # each key's first row of the contract table
TASK = {"name": "mqar", "vocab_size": 24, "seq_len": 16, "num_kv_pairs": 2}
TRAIN = {"batch_size": 4, "num_train_examples": 64, "num_test_examples": 8, "eval_every": 20,
         "early_stop_accuracy": None, "device": "cpu", "warmup_steps": 5}


@pytest.fixture
def float64():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def run(key: str, kwargs: dict, **train_fields) -> rk.RunConfig:
    model = {"vocab_size": 25, "d_model": 16, "num_layers": 2, "mixer": {"name": key, **kwargs}}
    return rk.RunConfig(model=model, task=TASK, train={**TRAIN, **train_fields})


def alone(config: rk.RunConfig) -> tuple[list[float], rk.training.RunResult]:
    losses = []
    result = train(config, on_step=lambda s: losses.append(s["loss"]))
    return losses, result


def packed(configs: list[rk.RunConfig]) -> tuple[list[list[float]], list]:
    losses = {c.run_id: [] for c in configs}
    results = train_packed(configs, on_step=lambda c, s: losses[c.run_id].append(s["loss"]))
    return [losses[c.run_id] for c in configs], results


def assert_same_run(packed_losses, packed_result, alone_losses, alone_result):
    assert len(packed_losses) == len(alone_losses)
    packed_losses, alone_losses = torch.tensor(packed_losses), torch.tensor(alone_losses)
    # Rounding differs (the packed kernels take their exact forms), and AdamW's g / (|g| + eps) turns
    # the rounding of near-zero gradients (1e-16) into differences that grow over the steps (measured
    # in float64 at step 50: up to 1e-6 for GLA, RetNet, DeltaNet at lr 1e-2; RWKV-7 1e-2 at lr 1e-2,
    # 3e-7 at 3e-3). A defect of the optimiser, schedule, clipping or data shows from step 2 at ~1e-3.
    torch.testing.assert_close(packed_losses[:10], alone_losses[:10], rtol=1e-8, atol=0)
    torch.testing.assert_close(packed_losses, alone_losses, rtol=1e-5, atol=0)
    assert packed_result.status == alone_result.status
    assert packed_result.metrics["steps"] == alone_result.metrics["steps"]
    assert packed_result.metrics["accuracy"] == alone_result.metrics["accuracy"]
    assert [c["step"] for c in packed_result.curve] == [c["step"] for c in alone_result.curve]
    assert_same_weights(packed_result.model, alone_result.model)


def assert_same_weights(model, reference, tolerance: float = 1e-5):
    """Each parameter within ``tolerance`` in relative norm (one element can be off by AdamW's
    amplified rounding; a wrong update moves them all)."""
    for name, p in reference.state_dict().items():
        q = model.state_dict()[name]
        assert (q - p).norm() <= tolerance * p.norm() + 1e-12, f"{name}: {(q - p).norm() / p.norm():.2e}"


FAST = {"attention", "gated_deltanet"}  # the others run with the slow tests (about 5 s each)
KEYS = [key if key in FAST else pytest.param(key, marks=pytest.mark.slow) for key in sorted(rk.MIXERS)]


@pytest.mark.parametrize("key", KEYS)
def test_a_packed_member_trains_as_its_run_alone_for_every_mixer(key, float64):
    """50 steps of two members that differ in learning rate, seed (so data and init), weight decay and
    warmup: every step's loss, the curve and the final weights equal each run alone."""
    configs = [run(key, FIRST_CASE[key], max_steps=50, lr=3e-3, seed=0),
               run(key, FIRST_CASE[key], max_steps=50, lr=1e-3, seed=1, weight_decay=0.0, warmup_steps=10)]
    packed_losses, packed_results = packed(configs)
    for config, losses, result in zip(configs, packed_losses, packed_results):
        assert_same_run(losses, result, *alone(config))


@pytest.mark.parametrize("key", sorted(rk.MIXERS))
def test_a_packed_member_trains_as_its_run_alone_in_float32(key):
    """The default dtype, every mixer, 10 steps: each member's losses and its weights' updates stay
    within float32 rounding of its run alone. Updates, not weights: after 10 small steps many
    parameters moved less than any weight tolerance. Measured worst over the keys: losses 8e-6
    relative (Gated DeltaProduct); updates 1.2e-2 in relative norm for attention and MLA (SDPA's
    rounding through AdamW's g / (|g| + eps)), 1e-3 or less for the rest; a skipped or wrong update
    is off by its own size."""
    configs = [run(key, FIRST_CASE[key], max_steps=10, lr=3e-3, seed=0, eval_every=10),
               run(key, FIRST_CASE[key], max_steps=10, lr=1e-3, seed=1, weight_decay=0.0, warmup_steps=10,
                   eval_every=10)]
    packed_losses, packed_results = packed(configs)
    for config, losses, result in zip(configs, packed_losses, packed_results):
        alone_losses, alone_result = alone(config)
        assert all(p.dtype == torch.float32 for p in result.model.parameters())
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(alone_losses), rtol=5e-5, atol=0)
        assert result.status == alone_result.status and result.metrics["steps"] == 10
        start = initial_model(config, torch.device("cpu")).state_dict()
        for name, p in alone_result.model.state_dict().items():
            update, packed_update = p - start[name], result.model.state_dict()[name] - start[name]
            assert (packed_update - update).norm() <= 5e-2 * update.norm() + 1e-12, name


def test_members_leave_the_pack_at_their_own_stop(float64):
    """Different budgets, an early stop, a halt rule and a diverging member: each leaves when its run
    alone would, with the same weights, and the others go on unchanged."""
    configs = [
        run("attention", {}, max_steps=30, seed=0),
        run("attention", {}, max_steps=60, seed=1, betas=(0.8, 0.95), grad_clip=0.1, min_lr_ratio=0.5),
        run("attention", {}, max_steps=60, seed=2, lr=1e30),  # its weights overflow at step 4
        run("attention", {}, max_steps=60, seed=3, early_stop_accuracy=0.01, eval_every=5),  # stops early
    ]
    halt_at_40 = lambda step, accuracy: "halted" if step == 40 else None  # noqa: E731
    halts = [None, halt_at_40, None, None]
    finished = []
    results = train_packed(configs, halts=halts, on_result=lambda c, r: finished.append(c.run_id))
    assert finished == [configs[i].run_id for i in (2, 3, 0, 1)]  # each as soon as it stops
    assert [r.status for r in results] == ["done", "done", "diverged", "done"]
    assert [r.metrics["steps"] for r in results[:3]] == [30, 40, 4] and results[3].metrics["steps"] < 60
    assert results[1].metrics["halted"] == "halted"
    assert not math.isfinite(results[2].curve[-1]["loss"])
    for config, halt, result in zip(configs, halts, results):
        reference = train(config, halt=halt)
        assert reference.status == result.status and reference.metrics["steps"] == result.metrics["steps"]
        assert reference.metrics["accuracy"] == result.metrics["accuracy"]
        if result.status == "diverged":  # ends with its last finite weights (lr 1e30 amplifies any rounding)
            assert all(p.isfinite().all() for p in result.model.state_dict().values())
            continue
        assert_same_weights(result.model, reference.model)


def test_only_runs_of_one_model_task_and_batch_pack():
    base = run("attention", {})
    assert pack_key(base) == pack_key(run("attention", {}, lr=1e-2, seed=4, max_steps=7))
    assert pack_key(base) != pack_key(run("attention", {"num_heads": 4}))
    assert pack_key(base) != pack_key(run("attention", {}, batch_size=8))
    assert pack_key(run("attention", {}, mlm=True)) is None
    with pytest.raises(ValueError, match="share one pack_key"):
        train_packed([base, run("attention", {}, batch_size=8)])


def test_a_packed_sweep_stores_each_run_as_the_unpacked_sweep_does(tmp_path, float64):
    from recallkit.sweep.runner import run_sweep

    configs = [run("attention", {}, max_steps=30, lr=lr, seed=seed) for lr in (3e-3, 1e-2) for seed in (0, 1)]
    configs.append(run("linear_attention", {}, max_steps=30))  # packs with nothing: runs alone
    steps = []
    packed_rows = run_sweep(configs, tmp_path / "packed", pack=True, quiet=True,
                            on_step=lambda c, s: steps.append((c.run_id, s["step"])))
    alone_rows = run_sweep(configs, tmp_path / "alone", quiet=True)
    assert [r for r, s in steps[:4]] == [c.run_id for c in configs[:4]]  # the four stepped side by side
    by_id = {r["run_id"]: r for r in alone_rows}
    assert len(packed_rows) == 5 and all(r["status"] == "done" for r in packed_rows)
    for row in packed_rows:
        curve, alone_curve = row["metrics"]["curve"], by_id[row["run_id"]]["metrics"]["curve"]
        assert row["metrics"]["accuracy"] == by_id[row["run_id"]]["metrics"]["accuracy"]
        assert [c["step"] for c in curve] == [c["step"] for c in alone_curve]
        torch.testing.assert_close(torch.tensor([c["loss"] for c in curve]),
                                   torch.tensor([c["loss"] for c in alone_curve]), rtol=1e-5, atol=0)
    assert run_sweep(configs, tmp_path / "packed", pack=True, quiet=True) == packed_rows  # resumed: all done
    with pytest.raises(ValueError, match="serial executor"):
        run_sweep(configs, tmp_path / "process", executor="process", workers=2, pack=True, quiet=True)


def test_run_pack_on_the_command_line(tmp_path, sweep_file):
    from typer.testing import CliRunner

    from recallkit.cli import app
    from recallkit.sweep import Store

    result = CliRunner().invoke(app, ["run", str(sweep_file()), "--out", str(tmp_path), "--pack", "--quiet"])
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "results.sqlite", readonly=True) as store:
        rows = store.rows()
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    refused = CliRunner().invoke(app, ["run", str(sweep_file()), "--out", str(tmp_path / "b"), "--pack",
                                       "--executor", "process"])
    assert refused.exit_code != 0 and "serial executor" in refused.output


def test_a_packed_failure_fails_only_the_runs_still_training_and_a_recording_error_is_raised():
    from recallkit.sweep.worker import execute_packed

    configs = [run("attention", {}, max_steps=3), run("attention", {}, max_steps=10, seed=1)]

    def crash(config, s):
        if s["step"] == 5:
            raise RuntimeError("worker lost")

    outcomes = []
    execute_packed(configs, crash, lambda c, o: outcomes.append((c.run_id, o["status"], o.get("error", ""))))
    first, second = configs[0].run_id, configs[1].run_id
    assert [(i, status) for i, status, _ in outcomes] == [(first, "done"), (second, "failed")]
    assert "worker lost" in outcomes[1][2]

    def store_down(config, outcome):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):  # not recorded as the other run's failure
        execute_packed(configs, None, store_down)


def test_packed_results_say_so_and_short_training_sets_pack_by_the_batch_they_make(tmp_path):
    from recallkit.sweep.runner import run_sweep

    a, b = run("attention", {}, max_steps=5), run("attention", {}, max_steps=5, seed=1)
    small = run("attention", {}, max_steps=5, seed=2, num_train_examples=2)  # batches of 2, not 4
    assert pack_key(small) != pack_key(a)
    rows = run_sweep([a, b, a, small], tmp_path, pack=True, quiet=True)  # a given twice is one run
    assert {r["run_id"]: r["status"] for r in rows} == {c.run_id: "done" for c in (a, b, small)}
    packed = {r["run_id"]: r["metrics"].get("packed") for r in rows}
    assert packed == {a.run_id: 2, b.run_id: 2, small.run_id: None}
