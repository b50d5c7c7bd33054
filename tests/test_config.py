"""Configs: extra fields forbidden, impossible settings rejected clearly, stable run ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from tests.conftest import tiny_run


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (dict(d_model=30, mixer=dict(name="attention", num_heads=4)),
         "not divisible by attention num_heads=4"),
        (dict(mixer=dict(name="linear_attention", feature_map="identity")), "cannot be normalised"),
        (dict(mixer=dict(name="mamba_9000")), "unknown mixer 'mamba_9000'"),
        (dict(mixer=dict(name="attention", heads=2)), "Extra inputs are not permitted"),
        (dict(mixer=dict(name="attention"), dropout=0.1), "Extra inputs are not permitted"),
        (dict(mixer=[]), "mixer schedule is empty"),
    ],
)
def test_bad_model_configs_are_rejected(model, message):
    with pytest.raises(ValidationError, match=message):
        rk.ModelConfig(vocab_size=64, **model)


def test_run_config_checks_vocab_and_positions():
    base = dict(task=dict(name="mqar", vocab_size=256, seq_len=64, num_kv_pairs=8))
    with pytest.raises(ValidationError, match="smaller than the task's vocab_size=256"):
        rk.RunConfig(model=dict(vocab_size=128, mixer=dict(name="attention")), **base)
    with pytest.raises(ValidationError, match="exceeds model.max_position=32"):
        rk.RunConfig(model=dict(vocab_size=256, max_position=32, mixer=dict(name="attention")), **base)
    with pytest.raises(ValidationError, match="unknown task 'mqar2'"):
        rk.RunConfig(model=dict(vocab_size=256, mixer=dict(name="attention")), task=dict(name="mqar2"))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: rk.TrainConfig(batch_size=True), "batch_size"),
        (lambda: rk.TrainConfig(lr=False), "lr"),
        (lambda: rk.TrainConfig(betas=(True, 0.9)), "betas"),
        (lambda: rk.TrainConfig(batch_size=np.bool_(True)), "batch_size"),  # a grid built with numpy
        (lambda: rk.TrainConfig(max_steps=torch.tensor(True)), "max_steps"),
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="mamba", dt_rank=True)), "dt_rank"),
        (lambda: rk.RunConfig(model=dict(vocab_size=64, mixer=dict(name="attention")),
                              task=dict(name="mqar", vocab_size=64, seq_len=32, num_kv_pairs=4),
                              eval_lengths=[64, True]), "eval_lengths"),
    ],
)
def test_a_bool_is_not_read_as_a_number(build, field):
    with pytest.raises(ValidationError, match=f"{field} takes numbers, not a bool"):
        build()


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (dict(betas=(1.0, 0.9)), r"betas must each lie in \[0, 1\)"),
        (dict(betas=(0.9, -0.1)), r"betas must each lie in \[0, 1\)"),
        (dict(lr=1e38), "lr=1e\\+38 is too large"),
        (dict(lr=4e37, betas=(0.9, 0.98)), "lr=4e\\+37 is too large"),
    ],
)
def test_adamw_settings_that_cannot_run_are_refused(train, message):
    with pytest.raises(ValidationError, match=message):
        rk.TrainConfig(**train)


def test_numbers_and_real_bools_still_validate():
    assert rk.TrainConfig(batch_size=4, betas=(0.8, 0.9), mlm=True).batch_size == 4
    assert rk.ModelConfig(vocab_size=64, mixer=dict(name="mamba", dt_rank=3)).mixer.dt_rank == 3


def test_configs_are_frozen():
    config = tiny_run()
    with pytest.raises(ValidationError):
        config.train.lr = 1.0


def test_run_id_is_stable_and_round_trips_through_json():
    a, b = tiny_run(), tiny_run()
    assert a.run_id == b.run_id and len(a.run_id) == 16
    restored = rk.RunConfig.model_validate_json(a.canonical_json())
    assert restored == a and restored.run_id == a.run_id
    assert type(restored.model.mixer).__name__ == "AttentionConfig"
    assert tiny_run(lr=2e-3).run_id != a.run_id


def test_display_label_names_the_mixers():
    config = rk.RunConfig(
        model=dict(vocab_size=64,
                   mixer=[dict(name="linear_attention", feature_map="elu"), dict(name="attention")]),
        task=dict(name="mqar", vocab_size=64, seq_len=32, num_kv_pairs=4),
    )
    assert config.display_label == "linear_attention(elu)+attention"
