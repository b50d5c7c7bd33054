"""Attention variants: GQA/MQA, sliding windows, ALiBi / Hard-ALiBi / RoPE / NoPE, and MLA."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.mixers import build_mixer
from recallkit.mixers.mla import MLAState
from recallkit.ops.position_bias import alibi_slopes, attention_bias, hard_alibi_spans

D = 16


def attention(seed: int = 0, **kwargs) -> rk.mixers.Mixer:
    torch.manual_seed(seed)
    return build_mixer(D, rk.MIXERS["attention"].Config(**kwargs)).eval()


def x_of(T: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, T, D, generator=torch.Generator().manual_seed(seed))


def influence(mixer, x: torch.Tensor, source: int, target: int) -> bool:
    """Does changing token ``source`` change the output at ``target``?"""
    changed = x.clone()
    changed[:, source] += 5.0
    with torch.no_grad():
        return not torch.allclose(mixer(x)[:, target], mixer(changed)[:, target], atol=1e-6)


def test_alibi_slopes_are_geometric():
    torch.testing.assert_close(alibi_slopes(8), 2.0 ** -torch.arange(1, 9, dtype=torch.float32))
    torch.testing.assert_close(alibi_slopes(2), torch.tensor([2.0**-4, 2.0**-8]))


def test_alibi_bias_is_minus_slope_times_distance_below_the_diagonal():
    pos = torch.arange(5)
    bias = attention_bias(pos, pos, slopes=torch.tensor([0.5, 0.25]))  # (H, T, T)
    for h, m in enumerate((0.5, 0.25)):
        for i in range(5):
            for j in range(5):
                expected = -m * (i - j) if j <= i else -math.inf
                assert bias[h, i, j].item() == expected


def test_hard_alibi_head_h_sees_its_last_h_plus_1_tokens_and_the_rest_see_all():
    spans = hard_alibi_spans(4, 2)
    assert spans[:2].tolist() == [0.0, 1.0] and spans[2:].isinf().all()
    pos = torch.arange(6)
    visible = attention_bias(pos, pos, spans=spans).isfinite()  # (H, T, T)
    assert visible[0].equal(torch.eye(6, dtype=torch.bool))
    assert visible[1].equal(torch.ones(6, 6, dtype=torch.bool).tril()
                            & ~torch.ones(6, 6, dtype=torch.bool).tril(-2))
    assert visible[2].equal(torch.ones(6, 6, dtype=torch.bool).tril()) and visible[3].equal(visible[2])


@pytest.mark.parametrize("position", ["nope", "rope", "alibi"])
def test_sliding_window_sees_exactly_the_last_w_tokens(position):
    mixer, x = attention(window=4, num_heads=2, position=position), x_of()
    assert influence(mixer, x, source=8, target=11)  # 11 - 8 = 3 < 4
    assert not influence(mixer, x, source=7, target=11)  # 11 - 7 = 4: out of the window
    # between steps the state holds the w - 1 tokens the next query reads besides itself
    assert mixer.state_size(12) == 2 * D * 3 and mixer.state_size(3) == 2 * D * 3
    assert mixer.state_size(2) == 2 * D * 2


def test_without_window_every_past_token_matters():
    mixer, x = attention(num_heads=2, position="alibi"), x_of()
    assert influence(mixer, x, source=0, target=11)


def test_hard_alibi_keeps_the_nope_heads_global():
    mixer, x = attention(num_heads=4, position="hard_alibi"), x_of()
    assert influence(mixer, x, source=0, target=11)
    assert mixer.state_size(12) == 2 * D * 12  # the NoPE heads need the whole cache


def test_gqa_equals_mha_with_the_shared_heads_repeated():
    gqa = attention(num_heads=4, num_kv_heads=2, position="rope", rope_base=100.0)
    mha = attention(num_heads=4, position="rope", rope_base=100.0)
    d_h = D // 4
    wq, wk, wv = gqa.qkv.weight.split([4 * d_h, 2 * d_h, 2 * d_h])
    bq, bk, bv = gqa.qkv.bias.split([4 * d_h, 2 * d_h, 2 * d_h])

    def repeat(w: torch.Tensor) -> torch.Tensor:  # kv head g serves query heads 2g, 2g + 1
        return w.view(2, d_h, *w.shape[1:]).repeat_interleave(2, dim=0).reshape(4 * d_h, *w.shape[1:])

    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([wq, repeat(wk), repeat(wv)]))
        mha.qkv.bias.copy_(torch.cat([bq, repeat(bk), repeat(bv)]))
        mha.out.load_state_dict(gqa.out.state_dict())
        x = x_of()
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)
    assert gqa.state_size(10) * 2 == mha.state_size(10)
    assert attention(num_heads=4, num_kv_heads=1).state_size(10) * 4 == mha.state_size(10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_heads": 4, "num_kv_heads": 3}, "not a multiple of num_kv_heads"),
        ({"num_heads": 1, "position": "hard_alibi"}, "hard_alibi needs"),
        ({"num_heads": 2, "position": "rope", "hard_alibi_heads": 1}, "only used with position='hard_alibi'"),
        ({"window": 0}, "greater than 0"),
        ({"position": "sinusoidal"}, "position"),
    ],
)
def test_bad_attention_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        rk.MIXERS["attention"].Config(**kwargs)


def test_describe_names_the_variant():
    config = rk.MIXERS["attention"].Config
    assert config().describe() == "attention"
    assert (config(num_heads=4, num_kv_heads=1, position="rope", window=8).describe()
            == "attention(rope, mqa, window 8)")


def test_mla_caches_latents_not_per_head_keys():
    torch.manual_seed(0)
    mla = build_mixer(64, rk.MIXERS["mla"].Config(num_heads=8, kv_latent_dim=16, rope_dim=4)).eval()
    mha = build_mixer(64, rk.MIXERS["attention"].Config(num_heads=8))
    assert mla.kv_numbers_per_token() == 20 and mha.kv_numbers_per_token() == 128
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        _, state = mla.prefill(x)
    assert state.latent.shape == (2, 9, 16) and state.rope_key.shape == (2, 9, 4)
    assert mla.state_size(9) == 20 * 9


def test_mla_depends_only_on_relative_positions():
    """RoPE on the decoupled key: starting the same tokens at position 5 changes nothing."""
    torch.manual_seed(0)
    mla = build_mixer(D, rk.MIXERS["mla"].Config(kv_latent_dim=4, rope_dim=4)).eval()
    x = x_of(T=6)
    empty = mla.init_state(1, x.device, x.dtype)
    with torch.no_grad():
        late, _ = mla.prefill(x, state=MLAState(empty.latent, empty.rope_key, seen=5))
        torch.testing.assert_close(late, mla(x), atol=1e-5, rtol=1e-5)
