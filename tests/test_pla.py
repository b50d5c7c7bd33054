"""Prefix linear attention (JRT-RNN): the formula, parallel == recurrent after the prefix, the state."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.mixers import build_mixer, state_numel
from recallkit.mixers.linear_attention import LinearAttention, LinearAttentionConfig
from recallkit.ops.feature_maps import feature_dim
from tests.test_mixer_contract import assert_close, step_loop

D, T = 16, 19
CONFIGS = [
    {"feature_dim": 4, "num_heads": 2, "chunk_size": 8},
    {"feature_map": "elu", "chunk_size": 5},
    {"feature_dim": 4, "chunk_size": 4, "short_conv": 3},
]


def make(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs) -> rk.mixers.Mixer:
    torch.manual_seed(seed)
    return build_mixer(D, rk.MIXERS["pla"].Config(name="pla", **kwargs)).to(dtype).eval()


def inputs(batch: int = 3, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, T, D, generator=torch.Generator().manual_seed(1), dtype=dtype)


def reference(mixer, x: torch.Tensor, prefix_len: torch.Tensor) -> torch.Tensor:
    """The JRT formula token by token: y_i = phi(q_i)^T S_i / phi(q_i)^T z_i with
    S_i = sum_{j<M} phi(k_e,j) v_e,j^T + sum_{j<=i} phi(k_d,j) v_d,j^T, per example and head."""
    B, T_, _ = x.shape
    H, f, normalize = mixer.num_heads, mixer.config.feature_dim, mixer.config.normalize
    q, k_d = mixer.phi(mixer.qk(x).view(B, T_, 2, H, f)).unbind(2)  # (B, T, H, F)
    k_e = mixer.phi(mixer.k_e(x).view(B, T_, H, f))
    v_d, v_e = (proj(x).view(B, T_, H, -1) for proj in (mixer.v, mixer.v_e))  # (B, T, H, d_v)
    y = torch.zeros_like(v_d)
    for b in range(B):
        for h in range(H):
            S = sum(torch.outer(k_e[b, j, h], v_e[b, j, h]) for j in range(int(prefix_len[b])))
            z = sum(k_e[b, j, h] for j in range(int(prefix_len[b])))
            for i in range(T_):
                S = S + torch.outer(k_d[b, i, h], v_d[b, i, h])
                z = z + k_d[b, i, h]
                y[b, i, h] = q[b, i, h] @ S / ((q[b, i, h] @ z + 1e-6) if normalize else 1)
    return mixer.out(y.reshape(B, T_, -1))


@pytest.mark.parametrize("chunk_size", [3, 8, 64])
@pytest.mark.parametrize("feature_map", ["taylor", "elu"])
def test_chunked_matches_the_formula_in_float64(chunk_size, feature_map):
    mixer = make(dtype=torch.float64, feature_map=feature_map, feature_dim=4, num_heads=2,
                 chunk_size=chunk_size)
    x, prefix_len = inputs(dtype=torch.float64), torch.tensor([0, 7, T])
    with torch.no_grad():
        torch.testing.assert_close(mixer(x, prefix_len), reference(mixer, x, prefix_len),
                                   atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("prefix", [[7, 7, 7], [3, 11, 0]], ids=["uniform", "mixed"])
def test_forward_equals_prefill_equals_prefix_then_steps(kwargs, prefix):
    mixer, x, prefix_len = make(**kwargs), inputs(), torch.tensor(prefix)
    M = max(prefix)  # a mixed batch prefills its longest prefix; the shorter ones go on causally in it
    with torch.no_grad():
        y = mixer(x, prefix_len)
        y_prefill, state = mixer.prefill(x, prefix_len)
        y_head, state_head = mixer.prefill(x[:, :M], prefix_len)
        y_steps, state_steps = step_loop(mixer, x[:, M:], state_head)
    assert_close(y_prefill, y)
    assert_close(torch.cat([y_head, y_steps], dim=1), y)
    for a, b in zip(_leaves(state), _leaves(state_steps)):
        assert_close(a, b)


@pytest.mark.parametrize("kwargs", CONFIGS)
@pytest.mark.parametrize("split", [11, 12, 16])
def test_split_resume_after_the_prefix(kwargs, split):
    mixer, x, prefix_len = make(**kwargs), inputs(), torch.tensor([5, 11, 0])
    with torch.no_grad():
        y, state = mixer.prefill(x, prefix_len)
        y_head, state_head = mixer.prefill(x[:, :split], prefix_len)
        y_tail, state_tail = mixer.prefill(x[:, split:], prefix_len, state_head)  # prefix_len: already read
    assert_close(torch.cat([y_head, y_tail], dim=1), y)
    for a, b in zip(_leaves(state), _leaves(state_tail)):
        assert_close(a, b)


def test_a_prefix_beyond_the_first_prefill_is_refused():
    mixer, x = make(), inputs()
    with pytest.raises(ValueError, match="within the first prefill"):
        mixer.prefill(x[:, :8], torch.tensor([5, 9, 0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        mixer(x, torch.tensor([5, 9]))


def test_without_a_prefix_it_is_causal_linear_attention_with_the_decoder_weights():
    mixer, x = make(feature_dim=4, num_heads=2, chunk_size=8), inputs()
    linear = LinearAttention(D, LinearAttentionConfig(feature_dim=4, num_heads=2, chunk_size=8)).eval()
    decoder = {name: p for name, p in mixer.state_dict().items() if not name.startswith(("k_e.", "v_e."))}
    linear.load_state_dict(decoder)
    with torch.no_grad():
        assert_close(mixer(x), linear(x))
        assert_close(mixer(x, torch.zeros(3, dtype=torch.long)), linear(x))
        assert not torch.allclose(mixer(x, torch.tensor([4, 4, 4])), linear(x))


@pytest.mark.parametrize("kwargs", [{}, *CONFIGS])
def test_state_is_the_causal_linear_attention_state(kwargs):
    mixer, x = make(**kwargs), inputs()
    inner = {k: v for k, v in kwargs.items() if k != "short_conv"}
    linear = build_mixer(D, LinearAttentionConfig(**kwargs))
    with torch.no_grad():
        _, state = mixer.prefill(x, torch.tensor([5, 11, T]))
    assert mixer.state_size(T) == linear.state_size(T) == state_numel(state) // 3
    tail = D * (kwargs.get("short_conv", 1) - 1)  # the wrapper's conv tail, when there is one
    F = feature_dim(inner.get("feature_map", "taylor"), inner.get("feature_dim", 16))
    heads = inner.get("num_heads", 1)
    assert mixer.state_size(T) == heads * F * (D // heads + 1) + tail


def test_gradients_reach_the_encoder_only_through_the_prefix():
    mixer = make(feature_dim=4, num_heads=2, chunk_size=8).train()
    x = inputs().requires_grad_()
    mixer(x, torch.tensor([5, 11, 0])).square().sum().backward()
    for name in ("k_e", "v_e", "qk", "v", "out"):
        grad = getattr(mixer, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    mixer.zero_grad()
    mixer(x, torch.zeros(3, dtype=torch.long)).square().sum().backward()
    assert mixer.k_e.weight.grad.abs().sum() == 0 and mixer.v_e.weight.grad.abs().sum() == 0


def test_model_passes_prefix_len_and_decodes_after_the_prefix():
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=32, d_model=16, num_layers=2, mixer={"name": "pla", "feature_dim": 4})
    model = rk.build_model(config).eval()
    tokens = torch.randint(0, 32, (2, 15), generator=torch.Generator().manual_seed(0))
    prefix_len = torch.tensor([6, 9])
    with torch.no_grad():
        logits = model(tokens, prefix_len)
        prefilled, state = model.prefill(tokens[:, :9], prefix_len)
        stepped = []
        for t in range(9, 15):
            step_logits, state = model.step(tokens[:, t], state)
            stepped.append(step_logits)
    assert_close(prefilled, logits[:, :9])
    assert_close(torch.stack(stepped, dim=1), logits[:, 9:])
    assert not torch.allclose(model(tokens), logits)  # the prefix was read


def test_a_two_layer_pla_model_trains_on_mqar():
    run = rk.RunConfig(
        model={"vocab_size": 64, "d_model": 32, "num_layers": 2, "mixer": {"name": "pla"}},
        task={"name": "mqar", "vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4},
        train={"max_steps": 5, "batch_size": 8, "num_train_examples": 64, "num_test_examples": 16,
               "eval_every": 5, "warmup_steps": 1, "weight_decay": 0.0, "device": "cpu"},
    )
    result = rk.train(run)
    assert result.status == "done" and 0 <= result.metrics["accuracy"] <= 1
    torch.manual_seed(run.train.seed)
    initial = rk.build_model(run.model)
    # without weight decay the encoder moves only if MQAR's prefix_len reached it through training
    assert not torch.equal(initial.blocks[0].mixer.k_e.weight, result.model.blocks[0].mixer.k_e.weight)
    assert result.state_size == 2 * (1 + 16 + 256) * (32 + 1)


def _leaves(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    return [t for value in vars(state).values() for t in _leaves(value)]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_an_empty_prefill_with_a_prefix_length_returns_nothing_and_the_empty_state(kwargs):
    """A prefill of 0 tokens given prefix_len crashed in the encoder (view(B, 0, H, -1)), where linear
    attention and PLA without prefix_len return an empty output."""
    mixer, x = make(**kwargs), inputs()[:, :0]
    y, state = mixer.prefill(x, torch.zeros(3, dtype=torch.long))
    assert y.shape == (3, 0, D)
    continued = mixer.prefill(inputs(), state=state)[0]  # continues causally, as from no state
    torch.testing.assert_close(continued, mixer.prefill(inputs())[0], atol=1e-6, rtol=1e-5)
