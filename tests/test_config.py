"""Configs: extra fields forbidden, impossible settings rejected clearly, stable run ids."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.errors import one_line
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


def _config_classes() -> list[type]:
    """Every config class recallkit defines (the registries' included), found from the base class."""
    from recallkit.base_config import StrictModel

    importlib.import_module("recallkit.mixers"), importlib.import_module("recallkit.tasks")
    importlib.import_module("recallkit.kv"), importlib.import_module("recallkit.text_tasks")
    found, todo = [], [StrictModel]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_no_config_takes_nan_or_infinity():
    classes = _config_classes()
    assert len(classes) > 50 and all(c.model_config.get("allow_inf_nan") is False for c in classes)
    with pytest.raises(ValidationError) as error:
        rk.TrainConfig(betas=(float("nan"), 0.9))
    assert one_line(error.value) == "invalid TrainConfig: betas.0: Input should be a finite number"


@pytest.mark.parametrize(
    ("build", "message"),
    [  # each was accepted and then failed or gave a NaN model at run time (config fuzzing)
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="mamba", dt_max=float("inf"))),
         "mixer.dt_max: Input should be a finite number"),
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="mamba3", dt_min=1e6, dt_max=1e30)),
         "mixer.dt_min: Input should be less than or equal to 10"),
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="gated_deltaproduct", dt_min=0.5, dt_max=0.1)),
         "gated_deltaproduct dt_min=0.5 exceeds dt_max=0.1"),
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="gla", expand_k=1e30)),
         "mixer.expand_k: Input should be less than or equal to 8"),
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="gla", gate_temperature=1e4)),
         "mixer.gate_temperature: Input should be less than or equal to 1024"),
        (lambda: rk.ModelConfig(vocab_size=64, mixer=dict(name="attention"), norm_eps=-1.0),
         "norm_eps: Input should be greater than 0"),
        (lambda: rk.RunConfig(model=dict(vocab_size=64, mixer=dict(name="attention")),
                              task=dict(name="reversal", vocab_size=64, seq_len=33, num_facts=4,
                                        facts_seed=-1)),
         "task.facts_seed: Input should be greater than or equal to 0"),
    ],
)
def test_settings_that_break_a_model_or_its_data_are_refused_at_config_time(build, message):
    with pytest.raises(ValidationError) as error:
        build()
    assert message in one_line(error.value) and "\n" not in one_line(error.value)


def test_every_mixer_with_a_dt_range_builds_a_finite_model_at_its_limit():
    from recallkit.base_config import DT_LIMIT

    for key, mixer in rk.MIXERS.items():
        if "dt_max" not in mixer.Config.model_fields:
            continue
        mixer_config = dict(name=key, dt_min=DT_LIMIT, dt_max=DT_LIMIT)
        config = rk.ModelConfig(vocab_size=16, d_model=16, mixer=mixer_config)
        model = rk.build_model(config)
        assert torch.isfinite(model(torch.randint(0, 16, (2, 12)))).all(), key
