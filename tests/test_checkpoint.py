"""Mid-run checkpoints: a run interrupted after any step resumes to exactly the uninterrupted result."""

from __future__ import annotations

import sys

import pytest
import torch

import recallkit as rk
from recallkit.checkpoint import read_checkpoint
from recallkit.sweep import run_sweep
from recallkit.sweep.runner import CHECKPOINT_DIR

TASK = dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
# 96 examples in batches of 16: a new shuffle every 6 steps, so the resumed data order is exercised
TRAIN = dict(max_steps=30, eval_every=10, batch_size=16, num_train_examples=96, num_test_examples=32,
             warmup_steps=2, early_stop_accuracy=None, device="cpu")


def _config(mixer: str, mlm: bool = False) -> rk.RunConfig:
    return rk.RunConfig(
        model=dict(vocab_size=33, d_model=16, num_layers=1, mixer={"name": mixer}),
        task=TASK, train={**TRAIN, "mlm": mlm},
    )


class Interrupt(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way records it as a failed run."""


def _interrupt_at(step: int):
    def on_step(s: dict) -> None:
        if s["step"] == step:
            raise Interrupt

    return on_step


@pytest.mark.parametrize(("mixer", "mlm"), [("linear_attention", False), ("pla", True)])
def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path, mixer, mlm):
    config, path = _config(mixer, mlm), tmp_path / "run.pt"
    whole = rk.train(config)
    with pytest.raises(Interrupt):  # killed during step 14: the checkpoint holds step 13
        rk.train(config, on_step=_interrupt_at(14), checkpoint=path, checkpoint_seconds=0)
    assert read_checkpoint(path, config.run_id)["step"] == 13
    resumed = rk.train(config, checkpoint=path, checkpoint_seconds=0)
    assert resumed.metrics == whole.metrics  # accuracies, curve (losses included), evals, steps
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not path.exists()  # spent once the run ends


def test_a_checkpoint_of_another_run_or_a_corrupt_one_is_set_aside_and_the_run_restarts(tmp_path):
    path = tmp_path / "run.pt"
    config = _config("linear_attention")
    with pytest.raises(Interrupt):
        rk.train(config, on_step=_interrupt_at(3), checkpoint=path, checkpoint_seconds=0)
    other = _config("attention")
    result = rk.train(other, checkpoint=path)  # another run's checkpoint: never resumed
    assert result.metrics["curve"] == rk.train(other).metrics["curve"]
    (note,) = result.metrics["warnings"]
    assert "belongs to run" in note and "restarted from step 0" in note and "\n" not in note
    assert not path.exists() and (tmp_path / "run.pt.corrupt").exists()
def test_a_killed_sweep_resumes_its_run_mid_way(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules["recallkit.training"], "CHECKPOINT_SECONDS", 0.0)  # after every step
    config, out = _config("linear_attention"), tmp_path / "out"
    steps_seen: list[int] = []

    def interrupt(_config, s: dict) -> None:
        steps_seen.append(s["step"])
        if s["step"] == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_sweep([config], out, quiet=True, on_step=interrupt)
    assert (out / CHECKPOINT_DIR / f"{config.run_id}.pt").exists()
    steps_seen.clear()
    rows = run_sweep([config], out, quiet=True, on_step=lambda _, s: steps_seen.append(s["step"]))
    assert steps_seen[0] == 20  # the first step the resumed run takes: nothing before it is redone
    assert rows[0]["status"] == "done"
    assert rows[0]["metrics"]["curve"] == rk.train(config).metrics["curve"]
    assert not any((out / CHECKPOINT_DIR).iterdir())
