"""Recipes: hybrids built from registered mixers."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.recipes import based, jrt_rnn, kimi_linear, qwen3_next, samba


def based_model(**kwargs) -> rk.LanguageModel:
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=32, d_model=16, num_layers=2, mixer=based(**kwargs), mlp="none")
    return rk.build_model(config).eval()


def test_based_state_is_constant_in_length_and_matches_the_formula():
    model = based_model(feature_dim=4, window=8, short_conv=4)
    d, f, w, k = 16, 4, 8, 4
    taylor = (1 + f + f * f) * (d + 1)  # one head: S (F, d_v) and the normaliser column
    expected = 2 * d * (w - 1) + taylor + 2 * d * (k - 1)  # the window: the w - 1 tokens before a query
    assert model.state_size(7) == model.state_size(1000) == expected
    assert model.state_size(4) < expected  # the window's cache is not full yet


def assert_prefill_then_steps_match_the_parallel_form(model, prefix_len=None, split: int = 11, T: int = 23):
    """Prefill ``split`` tokens (the whole prefix, if any), step the rest: the parallel form's logits."""
    tokens = torch.randint(0, 32, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(tokens, prefix_len)
        prefilled, state = model.prefill(tokens[:, :split], prefix_len)
        stepped = []
        for t in range(split, T):
            step_logits, state = model.step(tokens[:, t], state)
            stepped.append(step_logits)
    torch.testing.assert_close(prefilled, logits[:, :split], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.stack(stepped, dim=1), logits[:, split:], atol=1e-5, rtol=1e-4)
    assert model.state_size(T) == rk.mixers.state_numel(state.layers) // 2


def test_based_recurrent_inference_matches_the_parallel_form_past_the_window():
    model = based_model(feature_dim=4, window=5, num_heads=2, window_heads=2)
    assert_prefill_then_steps_match_the_parallel_form(model)


def test_based_rejects_an_empty_window():
    with pytest.raises(ValueError, match="window must be >= 1"):
        based(window=0)


def test_jrt_rnn_has_based_state_and_decodes_after_the_prefix():
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=32, d_model=16, num_layers=3, mlp="none",
                            mixer=jrt_rnn(feature_dim=4, window=5, short_conv=3, conv_layers=1,
                                          conv_kernel=3))
    model = rk.build_model(config).eval()
    assert [m.name for m in config.layer_mixers] == ["pla", "attention", "base_conv"]
    d, f, w, k = 16, 4, 5, 3
    assert model.state_size(1000) == (based_model(feature_dim=4, window=5, short_conv=3).state_size(1000)
                                      + d * (k - 1))
    window = 2 * d * (w - 1)
    assert model.state_size(1000) == (1 + f + f * f) * (d + 1) + window + 2 * d * (k - 1) + d * (k - 1)
    assert_prefill_then_steps_match_the_parallel_form(model, prefix_len=torch.tensor([7, 11]))


def test_jrt_rnn_rejects_bad_arguments():
    with pytest.raises(ValueError, match="window must be >= 1"):
        jrt_rnn(window=0)
    with pytest.raises(ValueError, match="conv_layers must be >= 0"):
        jrt_rnn(conv_layers=-1)


def recipe_model(schedule: list[dict], num_layers: int | None = None) -> rk.LanguageModel:
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=32, d_model=16, num_layers=num_layers or len(schedule), mixer=schedule,
                            mlp="none")
    return rk.build_model(config).eval()


@pytest.mark.parametrize("heads", [1, 2])
def test_qwen3_next_is_three_gated_deltanet_layers_per_gqa_attention_layer(heads):
    model = recipe_model(qwen3_next(num_heads=heads, attention_heads=4, kv_heads=2), num_layers=8)
    assert [m.name for m in model.config.layer_mixers] == (["gated_deltanet"] * 3 + ["attention"]) * 2
    d, k = 16, 4
    per_period = 3 * d * d // heads + 2 * 1000 * d * 2 // 4 + 4 * d * (k - 1)  # GDN, GQA cache, conv tails
    assert model.state_size(1000) == 2 * per_period
    assert_prefill_then_steps_match_the_parallel_form(model)


def test_kimi_linear_is_three_kda_layers_per_nope_mla_layer():
    model = recipe_model(kimi_linear(num_heads=2, mla_heads=2, kv_latent_dim=6))
    assert [m.name for m in model.config.layer_mixers] == ["kda"] * 3 + ["mla"]
    mla = model.config.layer_mixers[-1]
    assert mla.rope_dim == 0  # NoPE: position comes from the KDA layers
    d, k = 16, 4
    assert model.state_size(1000) == 3 * d * d // 2 + 6 * 1000 + 4 * d * (k - 1)
    assert_prefill_then_steps_match_the_parallel_form(model)


def test_samba_alternates_mamba_and_a_sliding_window_with_constant_state():
    model = recipe_model(samba(d_state=4, window=5))
    assert [m.name for m in model.config.layer_mixers] == ["mamba", "attention"]
    d, expand, conv = 16, 2, 4
    expected = expand * d * (4 + conv - 1) + 2 * d * (5 - 1)
    assert model.state_size(4) == model.state_size(1000) == expected
    assert_prefill_then_steps_match_the_parallel_form(model)  # T=23: past the window


@pytest.mark.parametrize(("recipe", "kwargs", "message"), [
    (qwen3_next, {"linear_layers": 0}, "qwen3_next linear_layers must be >= 1"),
    (kimi_linear, {"linear_layers": -1}, "kimi_linear linear_layers must be >= 1"),
    (samba, {"window": 0}, "samba window must be >= 1"),
])
def test_recipes_reject_bad_arguments(recipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        recipe(**kwargs)


@pytest.mark.parametrize("recipe", [based, jrt_rnn, qwen3_next, samba])
def test_the_attention_layer_of_each_recipe_is_rotary(recipe):
    config = rk.ModelConfig(vocab_size=16, d_model=16, num_layers=len(recipe()), mixer=recipe())
    attention = [m for m in config.layer_mixers if m.name == "attention"]
    assert attention and all(m.position == "rope" for m in attention)
