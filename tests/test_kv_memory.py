"""KV bytes per token: MHA / GQA / MQA / MLA against hand-computed numbers; None for fixed-size states."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.inference.kv_memory import (
    default_kv_numbers_per_token,
    kv_bytes_per_token,
    kv_numbers_per_token,
)
from recallkit.mixers import build_mixer

D = 32  # d_model


def mixer(name: str, **kw):
    return build_mixer(D, rk.MIXERS[name].Config(name=name, **kw))


def model(mixer_config, num_layers: int = 2) -> rk.LanguageModel:
    torch.manual_seed(0)
    return rk.build_model(rk.ModelConfig(vocab_size=16, d_model=D, num_layers=num_layers, mixer=mixer_config))


@pytest.mark.parametrize(
    ("name", "kw", "numbers"),
    [
        ("attention", {"num_heads": 4}, 2 * 4 * 8),  # MHA: 2 * H * d_h, d_h = 32 / 4
        ("attention", {"num_heads": 4, "num_kv_heads": 2}, 2 * 2 * 8),  # GQA: 2 * H_kv * d_h
        ("attention", {"num_heads": 4, "num_kv_heads": 1}, 2 * 1 * 8),  # MQA: one shared K and V head
        ("attention", {"num_heads": 4, "short_conv": 3}, 2 * 4 * 8),  # the conv tail is fixed-size
        ("mla", {"num_heads": 4, "kv_latent_dim": 6, "rope_dim": 4}, 6 + 4),  # MLA: d_c + d_R
    ],
)
def test_kv_per_token_by_hand(name, kw, numbers):
    m = mixer(name, **kw)
    assert kv_numbers_per_token(m) == numbers
    assert kv_bytes_per_token(m) == 2 * numbers  # fp16/bf16 by default
    assert kv_bytes_per_token(m, bytes_per_number=4) == 4 * numbers
    lm = model({"name": name, **kw}, num_layers=3)
    assert kv_bytes_per_token(lm) == 3 * 2 * numbers  # summed over layers
    # and it is exactly what the state grows by per token (DESIGN.md rule 4)
    assert lm.state_size(11) - lm.state_size(10) == 3 * numbers


def test_fixed_size_states_have_no_kv_per_token():
    for name in ("linear_attention", "mamba2", "gla"):
        assert kv_bytes_per_token(mixer(name)) is None
    assert kv_bytes_per_token(model({"name": "mamba", "chunk_size": 8})) is None


def test_hybrid_counts_only_its_attention_layers():
    lm = model([{"name": "mamba2"}, {"name": "attention", "num_heads": 2, "num_kv_heads": 1}], num_layers=4)
    assert kv_numbers_per_token(lm) == 2 * (2 * 1 * 16)  # two attention layers, MQA with d_h = 16


def test_registry_defaults_at_width_128():
    assert default_kv_numbers_per_token("attention") == 2 * 1 * 128  # default: one head of 128
    assert default_kv_numbers_per_token("mla") == 32 + 8
    assert default_kv_numbers_per_token("mamba2") is None
