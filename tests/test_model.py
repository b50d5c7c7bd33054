"""LanguageModel: parallel == prefill == step, hybrid schedules, state accounting."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.mixers import state_numel

SCHEDULES = [
    {"name": "attention", "num_heads": 2},
    {"name": "linear_attention", "feature_map": "taylor", "feature_dim": 4, "chunk_size": 8},
    [{"name": "linear_attention", "feature_map": "elu"}, {"name": "attention"}],
]


def model(mixer, **kw) -> rk.LanguageModel:
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=40, d_model=16, num_layers=3, mixer=mixer, max_position=32, **kw)
    return rk.build_model(config).eval()


@pytest.mark.parametrize("mixer", SCHEDULES)
@pytest.mark.parametrize("mlp", ["gelu", "swiglu", "none"])
def test_forward_prefill_step_agree(mixer, mlp):
    m = model(mixer, mlp=mlp)
    tokens = torch.randint(0, 40, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = m(tokens)
        prefill_logits, state = m.prefill(tokens[:, :9])
        tail, state = m.prefill(tokens[:, 9:15], state=state)
        steps = []
        for t in range(15, 21):
            step_logits, state = m.step(tokens[:, t], state)
            steps.append(step_logits)
    torch.testing.assert_close(torch.cat([prefill_logits, tail, torch.stack(steps, 1)], 1), logits,
                               atol=3e-5, rtol=1e-4)
    assert state.position == 21
    assert m.state_size(21) == state_numel(state.layers) // 2


def test_hybrid_schedule_cycles_over_layers():
    m = model(SCHEDULES[2])
    kinds = [type(b.mixer).__name__ for b in m.blocks]
    assert kinds == ["LinearAttention", "Attention", "LinearAttention"]


def test_state_size_sums_layers_and_grows_only_for_attention():
    attention, linear = model(SCHEDULES[0]), model(SCHEDULES[1])
    assert attention.state_size(64) == 3 * 2 * 16 * 64 == 2 * attention.state_size(32)
    assert linear.state_size(64) == linear.state_size(32) == 3 * 1 * 21 * (16 + 1)


def test_positions_beyond_max_position_are_a_clear_error():
    m = model(SCHEDULES[0])
    with pytest.raises(rk.errors.RecallkitError, match="exceeds the learned positions"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_another_models_state_is_a_clear_error():
    three = model(SCHEDULES[0])
    torch.manual_seed(0)
    two = rk.build_model(rk.ModelConfig(vocab_size=40, d_model=16, num_layers=2, mixer=SCHEDULES[0]))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with torch.no_grad():
        _, state = two.prefill(ids)
        for resume in (lambda: three.prefill(ids, state=state), lambda: three.step(ids[:, 0], state)):
            with pytest.raises(rk.errors.RecallkitError, match="the state holds 2 layers, this model has 3"):
                resume()
        _, own = three.prefill(ids)
        with pytest.raises(rk.errors.RecallkitError, match="the state holds 1 sequences, the input 2"):
            three.prefill(ids.expand(2, -1), state=own)


def test_head_is_tied_to_the_embedding():
    m = model(SCHEDULES[0])
    assert not any(p is m.embed.weight for n, p in m.named_parameters() if n != "embed.weight")
    assert m.num_params() == sum(p.numel() for p in m.parameters())
