"""Training determinism, schedule and evaluation metrics."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import recallkit as rk
from recallkit.evaluate import evaluate
from recallkit.tasks import Batch, shared_data
from recallkit.training import lr_factor
from tests.cases import CASES
from tests.conftest import tiny_run


def test_same_config_and_seed_give_the_same_metrics():
    a, b = rk.train(tiny_run()), rk.train(tiny_run())
    assert a.metrics["accuracy"] == b.metrics["accuracy"]
    assert a.curve == b.curve
    c = rk.train(tiny_run(seed=1))
    assert c.curve != a.curve


def test_training_does_not_change_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    rk.train(tiny_run(max_steps=2))
    assert torch.equal(torch.rand(3), expected)


def test_result_carries_state_size_params_and_curve():
    result = rk.train(tiny_run(max_steps=20, eval_every=5))
    assert result.status == "done"
    assert result.state_size == result.model.state_size(16) == 2 * 16 * 16
    assert result.num_params == result.model.num_params()
    assert [c["step"] for c in result.curve] == [5, 10, 15, 20]
    assert result.metrics["steps"] == 20


def test_early_stopping_stops_at_the_threshold(one_thread):
    """MQAR with 2 pairs: answering one of the 2 values in context scores 0.5 (the trivial baseline),
    so 0.9 needs recall. This 2-layer NoPE attention crosses it at step 110 (0.94, ~2 s; measured)."""
    run = rk.RunConfig(
        model=dict(vocab_size=32, d_model=32, num_layers=2, mlp="none",
                   mixer={"name": "attention", "short_conv": 3}),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
        train=dict(max_steps=400, eval_every=10, batch_size=32, num_train_examples=8192, num_test_examples=64,
                   warmup_steps=10, lr=1e-2, early_stop_accuracy=0.9, device="cpu"),
    )
    result = rk.train(run)
    assert result.metrics["steps"] < 400
    assert result.metrics["accuracy"] >= 0.9  # baseline 0.5
    evaluated = [point["accuracy"] for point in result.curve]
    assert evaluated[-1] >= 0.9 and all(a < 0.9 for a in evaluated[:-1])  # stopped at the first crossing


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


class Oracle(torch.nn.Module):
    """Predicts the labels of a fixed batch, except on rows listed in ``wrong``."""

    def __init__(self, batch: Batch, wrong: dict[int, int]) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(1, 1)
        self.batch, self.wrong = batch, wrong

    def forward(self, inputs, prefix_len=None):
        targets = self.batch.labels.clamp(min=0).clone()
        for row, count in self.wrong.items():  # spoil the first `count` labelled positions of a row
            positions = (self.batch.labels[row] >= 0).nonzero()[:count, 0]
            targets[row, positions] = (targets[row, positions] + 1) % 8
        return torch.nn.functional.one_hot(targets, 8).float()


def test_per_sequence_and_token_pooled_accuracy_differ_as_defined():
    labels = torch.full((2, 6), -100)
    labels[0, [1, 3]] = torch.tensor([2, 3])  # 2 labels
    labels[1, [0, 2, 4, 5]] = torch.tensor([1, 4, 5, 6])  # 4 labels
    batch = Batch(torch.zeros(2, 6, dtype=torch.long), labels, torch.zeros(2, dtype=torch.long),
                  {"group": torch.tensor([0, 1])})
    metrics = evaluate(Oracle(batch, {0: 1}), batch)
    assert metrics["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["token_accuracy"] == pytest.approx(5 / 6)
    assert metrics["slices"]["group"]["0"]["accuracy"] == pytest.approx(0.5)
    assert metrics["slices"]["group"]["1"]["accuracy"] == pytest.approx(1.0)
    assert not math.isnan(metrics["accuracy"])


def test_with_nothing_scored_every_score_is_nan_not_zero():
    labels = torch.full((2, 6), -100)
    batch = Batch(torch.zeros(2, 6, dtype=torch.long), labels, torch.zeros(2, dtype=torch.long))
    metrics = evaluate(Oracle(batch, {}), batch)
    assert all(math.isnan(metrics[k]) for k in ("accuracy", "token_accuracy", "exact_match"))
    assert metrics["num_examples"] == 0


def test_every_eval_task_is_scored_with_the_state_size_at_its_length():
    task = dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    config = rk.RunConfig(
        model=dict(vocab_size=32, d_model=16, num_layers=1,
                   mixer=dict(name="attention", position="rope", rope_base=100.0)),
        task=task, eval_tasks=[task, {**task, "seq_len": 32, "num_kv_pairs": 4}],
        train=dict(max_steps=10, eval_every=5, batch_size=8, num_train_examples=64, num_test_examples=16),
    )
    result = rk.train(config)
    evals = result.metrics["evals"]
    assert [(e["seq_len"], e["state_size"]) for e in evals] == [(16, 2 * 16 * 16), (32, 2 * 16 * 32)]
    assert evals[0]["accuracy"] == result.metrics["accuracy"]
    assert set(evals[1]["slices"]["num_kv_pairs"]) == {"4"}
    assert result.state_size == 2 * 16 * 16


def test_weight_decay_skips_parameters_marked_no_weight_decay():
    from recallkit.training import _optimizer

    config = rk.RunConfig(model=dict(vocab_size=16, d_model=16, num_layers=1, mixer={"name": "mamba"}),
                          task=dict(name="mqar", vocab_size=16, seq_len=16, num_kv_pairs=2))
    model = rk.build_model(config.model)
    decay_group, no_decay_group = _optimizer(model, config).param_groups
    a_log = model.blocks[0].mixer.A_log
    assert a_log.ndim == 2 and any(p is a_log for p in no_decay_group["params"])
    assert not any(p is a_log for p in decay_group["params"])
    assert decay_group["weight_decay"] > 0 and no_decay_group["weight_decay"] == 0


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_no_bias_or_norm_gain_of_any_mixer_is_decayed(key, kwargs):
    """The documented rule, by name: biases and norm gains are not decayed, whatever their shape
    (FoX-pro's (H, d_h) norm gains, Mamba-3's (H, N) B and C biases were)."""
    from recallkit.mixers import build_mixer
    from recallkit.training import decays

    mixer = build_mixer(16, rk.MIXERS[key].Config(name=key, **kwargs))
    decayed = [name for name, p in mixer.named_parameters() if decays(p)]
    assert not [name for name in decayed if name.endswith("bias") or "norm" in name.split(".")[-1]], decayed


def _labelled_batch() -> Batch:
    labels = torch.full((2, 6), -100)
    labels[:, 2] = 3
    return Batch(torch.zeros(2, 6, dtype=torch.long), labels, torch.zeros(2, dtype=torch.long))


def _fail(*args, **kwargs):
    raise RuntimeError("evaluation failed")


def test_greedy_with_a_policy_is_refused_before_any_work(monkeypatch):
    module = importlib.import_module("recallkit.evaluate")  # rk.evaluate is the function
    for name in ("predict", "evaluate_with_policy", "greedy_predictions"):
        monkeypatch.setattr(module, name, _fail)  # any work before the check would raise RuntimeError
    batch = _labelled_batch()
    model = Oracle(batch, {}).train()
    with pytest.raises(ValueError, match="without an eviction policy"):
        evaluate(model, batch, policy="window", budget=4, greedy=True)
    assert model.training


@pytest.mark.parametrize("failing", ["predict", "evaluate_with_policy", "greedy_predictions"])
def test_a_failed_evaluation_restores_the_training_mode(monkeypatch, failing):
    monkeypatch.setattr(importlib.import_module("recallkit.evaluate"), failing, _fail)
    batch = _labelled_batch()
    policy = {"policy": "window", "budget": 4} if failing == "evaluate_with_policy" else {}
    for training in (True, False):
        model = Oracle(batch, {}).train(training)
        with pytest.raises(RuntimeError, match="evaluation failed"):
            evaluate(model, batch, greedy=failing == "greedy_predictions", **policy)
        assert model.training is training


def test_runs_of_one_task_and_seed_share_one_data_set_that_no_run_changes():
    task = dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2)
    train = dict(max_steps=3, batch_size=8, num_train_examples=32, num_test_examples=8, device="cpu")
    model = dict(vocab_size=33, d_model=16, num_layers=1, mixer={"name": "attention"})
    runs = [  # MLM masking, an eviction policy and a second eval task: everything that reads the data
        rk.RunConfig(model=model, task=task, train={**train, "mlm": True}),
        rk.RunConfig(model=model, task=task, train={**train, "lr": 1e-3},
                     eval_tasks=[task, {**task, "seq_len": 24}],
                     eval_policies=[{"policy": "h2o", "budget": 4}]),
    ]
    shared_data.clear()
    calls = []
    original = type(runs[0].task).generate

    def counted(self, num_examples, seed):
        calls.append((self.seq_len, num_examples, seed))
        return original(self, num_examples, seed)

    type(runs[0].task).generate = counted
    try:
        for run in runs:
            rk.train(run)
        assert sorted(calls) == [(16, 8, 2**31), (16, 32, 0), (24, 8, 2**31)]  # each set once for both runs
        for seq_len, num_examples, seed in list(calls):
            at_length = runs[0].task.model_copy(update={"seq_len": seq_len})
            cached = shared_data.generate_once(at_length, num_examples, seed)
            fresh = original(at_length, num_examples, seed)
            assert torch.equal(cached.inputs, fresh.inputs) and torch.equal(cached.labels, fresh.labels)
            assert torch.equal(cached.prefix_len, fresh.prefix_len)
        assert len(calls) == 3  # the sets compared were the cached ones
    finally:
        type(runs[0].task).generate = original


def test_the_parallel_form_is_evaluated_in_minibatches_of_about_parallel_tokens(monkeypatch):
    evaluation = importlib.import_module("recallkit.evaluate")  # the module: the package exports the function
    config = tiny_run()
    torch.manual_seed(0)
    model = rk.build_model(config.model)
    data = shared_data.generate_once(config.task, 40, 0)  # T = 16
    whole = evaluate(model, data, batch_size=len(data))
    sizes, forward = [], type(model).forward
    monkeypatch.setattr(type(model), "forward",
                        lambda m, x, *a, **k: sizes.append(len(x)) or forward(m, x, *a, **k))
    monkeypatch.setattr(evaluation, "PARALLEL_TOKENS", 16 * 12)  # 12 sequences of T = 16 per minibatch
    assert evaluate(model, data) == whole
    assert sizes == [12, 12, 12, 4]


def test_a_last_step_that_blows_the_weights_up_is_diverged_not_a_zero_accuracy_point():
    """The loop checks each loss before its step, so a blow-up on the last step left a finished run
    whose every logit is NaN (accuracy 0.0 on the frontier as if measured). Alone and packed."""
    from recallkit.packed_training import train_packed

    blown = tiny_run(max_steps=1, lr=1e6, warmup_steps=0, eval_every=1)
    fine = tiny_run(max_steps=1, warmup_steps=0, eval_every=1)
    for result in (rk.train(blown), train_packed([blown, fine])[0]):
        assert result.status == "diverged"
        assert result.metrics["warnings"] == ["step 1 left weights whose outputs are not finite"]
    assert rk.train(fine).status == train_packed([blown, fine])[1].status == "done"


def test_a_sequence_without_labels_is_left_out_of_the_per_sequence_mean():
    labels = torch.full((3, 6), -100)
    labels[0, [1, 3]] = torch.tensor([2, 3])
    labels[2, [0, 5]] = torch.tensor([1, 4])  # row 1 has no scored position
    batch = Batch(torch.zeros(3, 6, dtype=torch.long), labels, torch.zeros(3, dtype=torch.long),
                  {"group": torch.tensor([0, 0, 1])})
    metrics = evaluate(Oracle(batch, {0: 1}), batch)  # row 0: 1 of 2 right; row 2: both right
    assert metrics["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["num_examples"] == 2
    assert metrics["exact_match"] == pytest.approx(0.5)
    assert metrics["slices"]["group"]["0"]["accuracy"] == pytest.approx(0.5)  # row 1 is not a 0
