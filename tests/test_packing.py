"""Packed models (recallkit.packing): every member of a vmapped stack computes the loss and the
gradients of the same model run alone, for every mixer case of the contract table."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

import recallkit as rk
from recallkit.packing import PackedModels
from recallkit.tasks.base import IGNORE_INDEX
from recallkit.training import _loss
from tests.cases import CASES

IDS = [f"{key}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for key, kw in CASES]
K, B, T, V = 3, 2, 13, 24


def members(key: str, kwargs: dict) -> list[rk.LanguageModel]:
    """K models of one configuration, each from its own seed (different weights), in float64 so that
    the kernels' exact forms (packed) and GEMM forms (alone) agree far below any real defect."""
    config = rk.ModelConfig(vocab_size=V, d_model=16, num_layers=2, mixer={"name": key, **kwargs})
    models = []
    for seed in range(K):
        torch.manual_seed(seed)
        models.append(rk.build_model(config).double())
    return models


def batches(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K different batches: inputs, labels (some unscored) and prefix lengths."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(0, V, (K, B, T), generator=g)
    labels = torch.randint(0, V, (K, B, T), generator=g)
    labels[torch.rand(K, B, T, generator=g) < 0.5] = IGNORE_INDEX
    labels[..., -1] = 0  # at least one scored label per example
    prefix_len = torch.randint(2, T, (K, B), generator=g)
    return inputs, labels, prefix_len


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_each_member_has_the_loss_and_gradients_of_its_model_alone(key, kwargs):
    models = members(key, kwargs)
    packed = PackedModels(models)
    inputs, labels, prefix_len = batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = packed.losses(inputs, labels, prefix_len)
        losses.sum().backward()
    # an op without a vmap batching rule runs member by member: packing then only adds overhead
    fallbacks = [str(w.message).split("batching rule for ")[-1][:60] for w in caught
                 if "batching rule" in str(w.message)]
    assert not fallbacks, fallbacks
    no_mlm = SimpleNamespace(train=SimpleNamespace(mlm=False))
    for k, model in enumerate(models):
        alone = _loss(model, rk.tasks.Batch(inputs[k], labels[k], prefix_len[k]), no_mlm, None)
        alone.backward()
        torch.testing.assert_close(losses[k], alone, atol=1e-10, rtol=1e-9)
        for name, p in model.named_parameters():
            torch.testing.assert_close(packed.params[name].grad[k], p.grad, atol=1e-10, rtol=1e-8,
                                       msg=lambda m, name=name: f"{name}: {m}")


def test_a_member_state_loads_into_a_model_that_then_matches_the_member():
    models = members("gated_deltanet", {"chunk_size": 5})
    packed = PackedModels(models)
    torch.manual_seed(9)
    fresh = rk.build_model(models[0].config).double()
    fresh.load_state_dict(packed.member_state(1))
    inputs, _, prefix_len = batches()
    torch.testing.assert_close(fresh(inputs[1], prefix_len[1]), models[1](inputs[1], prefix_len[1]))


def test_models_of_different_configurations_do_not_pack():
    a = rk.build_model(rk.ModelConfig(vocab_size=V, d_model=16, mixer={"name": "attention"}))
    b = rk.build_model(rk.ModelConfig(vocab_size=V, d_model=32, mixer={"name": "attention"}))
    with pytest.raises(ValueError, match="share one ModelConfig"):
        PackedModels([a, b])
