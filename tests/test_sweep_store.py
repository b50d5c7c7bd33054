"""Sweeps into SQLite: resume, no duplicates, SIGKILL mid-sweep, corrupt files, executors."""

from __future__ import annotations

import importlib
import math
import sqlite3

import pytest
import torch

import recallkit as rk
from recallkit.errors import RecallkitError
from recallkit.sweep import Store, load_sweep, run_sweep
from tests.conftest import tiny_run


def test_serial_sweep_records_every_run_once_and_resume_skips_finished(tmp_path, sweep_file):
    configs = load_sweep(sweep_file())
    assert len(configs) == 8
    rows = run_sweep(configs, tmp_path / "out", quiet=True)
    assert [r["status"] for r in rows] == ["done"] * 8
    # what is stored is what the run measured: the same config trained directly (deterministic on CPU)
    stored = {r["run_id"]: r for r in rows}[configs[0].run_id]
    direct = rk.train(configs[0])
    assert stored["metrics"]["accuracy"] == direct.metrics["accuracy"]
    assert (stored["state_size"], stored["num_params"]) == (direct.state_size, direct.num_params)
    first = {r["run_id"]: r["updated_at"] for r in rows}
    again = run_sweep(configs + configs[:2], tmp_path / "out", quiet=True)
    assert {r["run_id"]: r["updated_at"] for r in again} == first  # nothing re-ran, nothing duplicated


def test_process_executor_matches_serial_metrics(tmp_path, sweep_file):
    configs = load_sweep(sweep_file())[:3]
    serial = run_sweep(configs, tmp_path / "serial", quiet=True)
    parallel = run_sweep(configs, tmp_path / "process", executor="process", workers=2, quiet=True)
    by_id = {r["run_id"]: r["metrics"]["accuracy"] for r in serial}
    assert {r["run_id"]: r["metrics"]["accuracy"] for r in parallel} == by_id
    assert all(r["status"] == "done" for r in parallel)


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import recallkit.sweep.worker as worker

    real_train = worker.train

    def flaky(config, on_step=None, device=None, **checkpointing):
        if config.train.lr == 0.5:
            raise RuntimeError("boom")
        return real_train(config, on_step, device, **checkpointing)

    monkeypatch.setattr(worker, "train", flaky)
    rows = run_sweep([tiny_run(lr=0.5), tiny_run(lr=1e-3)], tmp_path, quiet=True)
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert rows[0]["error"].startswith("RuntimeError: boom")


def test_non_finite_loss_marks_run_diverged(tmp_path, monkeypatch):
    train_module = importlib.import_module("recallkit.training")  # the module, not rk.train
    monkeypatch.setattr(train_module.F, "cross_entropy", lambda *a, **k: torch.tensor(float("nan")))
    rows = run_sweep([tiny_run()], tmp_path, quiet=True)
    assert rows[0]["status"] == "diverged"
    assert math.isnan(rows[0]["metrics"]["curve"][-1]["loss"])  # read back as the run returned it
    with sqlite3.connect(tmp_path / "results.sqlite") as db:  # SQLite's JSON functions read it
        (loss,) = db.execute("SELECT json_extract(metrics, '$.curve[#-1].loss') FROM runs").fetchone()
    assert loss is None  # strict JSON: NaN is stored as null


def test_a_run_without_a_scored_sequence_reads_back_as_nan_and_every_reader_copes(tmp_path):
    """evaluate() gives NaN accuracy where no sequence has a scored position (a whole test set, or
    one slice value). Stored as null, it is NaN again for readers: the report's frontier and slice
    tables build, and halving never takes such a run as its reference."""
    from recallkit.report import write_report
    from recallkit.sweep.halving import reference

    nan = float("nan")
    configs = [tiny_run(lr=lr) for lr in (1e-3, 3e-3, 1e-2)]
    with Store(tmp_path / "results.sqlite") as store:
        store.add(configs)
        for config, accuracy in zip(configs[:2], (nan, 0.5)):
            scores = {"accuracy": accuracy, "token_accuracy": 0.0, "exact_match": accuracy, "num_examples": 4}
            slices = {"num_kv_pairs": {"2": scores, "4": {**scores, "accuracy": nan, "num_examples": 0}}}
            metrics = {**scores, "slices": slices, "steps": 20,
                       "curve": [{"step": 10, "loss": 1.0, "accuracy": accuracy}],
                       "evals": [{"task": "mqar", "seq_len": 16, "state_size": 100, **scores,
                                  "slices": slices}]}
            store.record(config.run_id, {"status": "done", "metrics": metrics, "state_size": 100,
                                         "num_params": 9, "wall_time": 1.0})
        rows = store.rows()
    first = rows[0]["metrics"]
    assert math.isnan(first["accuracy"]) and math.isnan(first["evals"][0]["accuracy"])
    assert rows[1]["metrics"]["slices"]["num_kv_pairs"]["4"]["num_examples"] == 0
    assert reference(configs[2], rows)["run_id"] == configs[1].run_id
    png, page = write_report(tmp_path)
    assert png.exists() and page.exists()


def test_corrupt_database_gives_one_clear_error(tmp_path):
    db = tmp_path / "results.sqlite"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RecallkitError, match="not a readable recallkit results database"):
        Store(db)
    assert db.read_bytes() == b"this is not sqlite" * 100  # never overwritten


def test_missing_database_is_an_error_for_readers(tmp_path):
    with pytest.raises(RecallkitError, match="no results database"):
        Store(tmp_path / "results.sqlite", create=False)


def test_bad_sweep_files_are_rejected_with_one_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("configs = []\n")
    with pytest.raises(RecallkitError, match="non-empty list `configs`"):
        load_sweep(bad)
    bad.write_text(
        "configs = [dict(model=dict(vocab_size=64, d_model=30, mixer=dict(name='attention', num_heads=4)),"
        " task=dict(name='mqar', vocab_size=64, seq_len=32, num_kv_pairs=4))]\n"
    )
    with pytest.raises(RecallkitError, match="not divisible by attention num_heads=4") as error:
        load_sweep(bad)
    assert "\n" not in str(error.value)
    with pytest.raises(RecallkitError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.py")


def test_a_device_override_runs_there_and_keeps_the_run_identity(tmp_path):
    config = tiny_run()
    rows = run_sweep([config], tmp_path / "a", quiet=True, device="cpu")
    assert rows[0]["run_id"] == config.run_id and rows[0]["metrics"]["device"] == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        run_sweep([config], tmp_path / "b", quiet=True, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run_sweep([config], tmp_path / "c", quiet=True, device="cuda")
        assert not (tmp_path / "c" / "results.sqlite").exists()  # refused before anything ran


def test_reset_running_turns_only_running_rows_back_to_pending(tmp_path):
    configs = [tiny_run(lr=1e-3), tiny_run(lr=2e-3), tiny_run(lr=3e-3), tiny_run(lr=4e-3)]
    with Store(tmp_path / "results.sqlite") as store:
        store.add(configs)
        store.record(configs[0].run_id, {"status": "failed", "error": "boom"})
        store.record(configs[1].run_id, {"status": "done", "metrics": {"accuracy": 0.5}})
        store.record(configs[2].run_id, {"status": "diverged", "metrics": {"accuracy": 0.1}})
        store.mark_running(configs[3].run_id)
        assert store.reset_running() == 1
        assert store.reset_running([configs[0].run_id]) == 0
        rows = {row["run_id"]: row for row in store.rows()}
    assert [rows[c.run_id]["status"] for c in configs] == ["failed", "done", "diverged", "pending"]
    assert rows[configs[0].run_id]["error"] == "boom"


def test_resume_keeps_a_diverged_run_as_finished(tmp_path):
    configs = [tiny_run(max_steps=3), tiny_run(lr=1e9, max_steps=3)]  # the second diverges
    rows = run_sweep(configs, tmp_path / "out", quiet=True)
    assert [r["status"] for r in rows] == ["done", "diverged"]
    again = run_sweep(configs, tmp_path / "out", quiet=True)
    assert [r["updated_at"] for r in again] == [r["updated_at"] for r in rows]  # neither ran again
