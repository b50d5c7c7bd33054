"""The mixer contract (DESIGN.md section 3) over every registry entry, with no exceptions."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import recallkit as rk
from recallkit.mixers import build_mixer, state_numel
from tests.cases import CASES

D_MODEL = 16
FLOAT64_T = 7  # > 5: the chunk_size=5 cases cross a chunk boundary in the float64 checks

IDS = [f"{key}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for key, kw in CASES]
PREFIX_AWARE = [(case, case_id) for case, case_id in zip(CASES, IDS) if rk.MIXERS[case[0]].prefix_aware]


def make(key: str, kwargs: dict, seed: int = 0) -> rk.mixers.Mixer:
    torch.manual_seed(seed)
    mixer = build_mixer(D_MODEL, rk.MIXERS[key].Config(name=key, **kwargs))
    return mixer.eval()


def inputs(batch: int = 2, T: int = 19, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, T, D_MODEL, generator=torch.Generator().manual_seed(seed))


def step_loop(mixer, x: torch.Tensor, state=None):
    state = mixer.init_state(x.shape[0], x.device, x.dtype) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = mixer.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_every_registry_key_has_a_case():
    assert set(rk.MIXERS) == {key for key, _ in CASES}


def test_every_chunked_mixer_has_a_case_that_crosses_chunk_boundaries():
    """A chunked form that reads a stale state across chunks, with a right final state, passed every
    check at the default chunk of 64 (T = 19): each key with a chunk_size needs a row whose chunks are
    shorter than the float64 checks' sequences."""
    for key, config in rk.MIXERS.items():
        if "chunk_size" in config.Config.model_fields:
            chunks = [kw.get("chunk_size", config.Config.model_fields["chunk_size"].default)
                      for k, kw in CASES if k == key]
            assert min(chunks) < FLOAT64_T, f"{key}: no case with chunk_size < {FLOAT64_T}"


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_forward_equals_prefill_equals_step_loop(key, kwargs):
    mixer, x = make(key, kwargs), inputs()
    with torch.no_grad():
        y_forward = mixer(x)
        y_prefill, state_prefill = mixer.prefill(x)
        y_steps, state_steps = step_loop(mixer, x)
    assert y_forward.shape == x.shape
    assert_close(y_prefill, y_forward)
    assert_close(y_steps, y_forward)
    for a, b in zip(_tensors(state_prefill), _tensors(state_steps)):
        assert_close(a, b)


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
@pytest.mark.parametrize("split", [1, 7, 16])
def test_split_resume(key, kwargs, split):
    mixer, x = make(key, kwargs), inputs()
    with torch.no_grad():
        y_full, state_full = mixer.prefill(x)
        y_head, state = mixer.prefill(x[:, :split])
        y_tail, state_prefilled = mixer.prefill(x[:, split:], state=state)
        y_stepped, state_stepped = step_loop(mixer, x[:, split:], state)
    assert_close(torch.cat([y_head, y_tail], dim=1), y_full)
    assert_close(torch.cat([y_head, y_stepped], dim=1), y_full)
    for a, b, c in zip(_tensors(state_full), _tensors(state_prefilled), _tensors(state_stepped)):
        assert_close(a, b)
        assert_close(a, c)


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_an_empty_block_is_a_no_op(key, kwargs):
    mixer, x = make(key, kwargs), inputs()
    with torch.no_grad():
        y_full, _ = mixer.prefill(x)
        y_empty, state = mixer.prefill(x[:, :0])  # from no state
        y_head, state = mixer.prefill(x[:, :7], state=state)
        y_none, state = mixer.prefill(x[:, 7:7], state=state)  # resumed
        y_tail, _ = mixer.prefill(x[:, 7:], state=state)
    assert y_empty.shape == y_none.shape == (x.shape[0], 0, D_MODEL)
    assert_close(torch.cat([y_head, y_tail], dim=1), y_full)


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_a_prefilled_state_holds_only_its_own_numbers(key, kwargs):
    """No state tensor is a view into a prefill's (B, T, ...) activations, which would keep them alive."""
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=32, d_model=D_MODEL, num_layers=1, mixer=dict(name=key, **kwargs))
    model = rk.build_model(config).eval()
    ids = torch.randint(0, 32, (2, 24))
    with torch.no_grad():
        _, state = model.prefill(ids)
        _, state = model.prefill(ids[:, :5], state=state)  # resumed too
    for tensor in _tensors(state):
        assert tensor.untyped_storage().nbytes() <= tensor.numel() * tensor.element_size()


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_causality(key, kwargs):
    mixer, x = make(key, kwargs), inputs()
    for t in (0, 5, 17):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :]) * 3
        with torch.no_grad():
            y, y_changed = mixer(x), mixer(changed)
        assert_close(y_changed[:, : t + 1], y[:, : t + 1])
        if t + 1 < x.shape[1]:  # and the future did change something, so the test can fail
            assert not torch.allclose(y_changed[:, t + 1 :], y[:, t + 1 :])


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
@pytest.mark.parametrize("T", [1, 8, 19])
def test_state_size_is_numel_of_real_state(key, kwargs, T):
    mixer, x = make(key, kwargs), inputs(batch=3, T=T)
    with torch.no_grad():
        _, state = mixer.prefill(x)
        _, stepped = step_loop(mixer, x)
    assert mixer.state_size(T) == state_numel(state) // 3 == state_numel(stepped) // 3
    assert state_numel(state) % 3 == 0 and mixer.state_size(T) > 0


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_gradients_flow_through_parallel_form(key, kwargs):
    mixer, x = make(key, kwargs).train(), inputs().requires_grad_()
    prefix_len = torch.tensor([7, 12]) if mixer.prefix_aware else None  # else the prefix reader idles
    mixer(x, prefix_len).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in mixer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_float64_step_loop_equals_forward_exactly(key, kwargs):
    """In float64 nothing may round to float32 on the way: the step loop equals the parallel form to
    ~1e-10 (a float32 cast of a gate in one path shows up as ~1e-8)."""
    mixer, x = make(key, kwargs).double(), inputs(batch=1, T=FLOAT64_T).double()
    with torch.no_grad():
        y_forward = mixer(x)
        y_steps, _ = step_loop(mixer, x)
    torch.testing.assert_close(y_steps, y_forward, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(("key", "kwargs"), CASES, ids=IDS)
def test_float64_gradcheck_of_the_parallel_form(key, kwargs):
    """The parallel form's input gradient passes float64 gradcheck. A float32 cast of a gate makes the
    finite differences (step 1e-6) see float32 rounding and fail. To stay fast the Jacobian is
    (T * 3) x (T * 4): 4 input channels vary, the others stay fixed, and the output is read through 3
    random directions; it stays a full Jacobian (fast_mode's one random projection let the casts pass)."""
    mixer, x = make(key, kwargs).double(), inputs(batch=1, T=FLOAT64_T).double()
    read = torch.randn(D_MODEL, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def probe(x_part: torch.Tensor) -> torch.Tensor:  # (1, T, 4) -> (1, T, 3)
        return mixer(torch.cat([x_part, x[..., 4:]], dim=-1)) @ read

    assert torch.autograd.gradcheck(probe, (x[..., :4].clone().requires_grad_(),))


@pytest.mark.parametrize(("key", "kwargs"), [c for c, _ in PREFIX_AWARE], ids=[i for _, i in PREFIX_AWARE])
def test_prefix_aware_causality(key, kwargs):
    """Rule 3 with a prefix of M tokens per example: outputs from M - 1 on are causal; outputs inside
    the prefix read the whole prefix and nothing after it; M = 0 is plain causality."""
    mixer, x = make(key, kwargs), inputs()
    prefix_len = torch.tensor([6, 13])
    with torch.no_grad():
        y = mixer(x, prefix_len)
        for b, M in enumerate(prefix_len.tolist()):
            for t in (M - 1, M + 2, 17):  # t = M - 1: what follows the prefix never reaches inside it
                changed = x.clone()
                changed[b, t + 1 :] = torch.randn_like(changed[b, t + 1 :]) * 3
                y_changed = mixer(changed, prefix_len)
                assert_close(y_changed[b, : t + 1], y[b, : t + 1])
                assert not torch.allclose(y_changed[b, t + 1 :], y[b, t + 1 :])
            changed = x.clone()
            changed[b, M - 1] = torch.randn_like(changed[b, M - 1]) * 3  # the prefix's last token
            y_changed = mixer(changed, prefix_len)
            assert not torch.allclose(y_changed[b, : M - 1], y[b, : M - 1])  # reaches back: non-causal
            assert_close(y_changed[1 - b], y[1 - b])  # and stays in its example
        no_prefix = torch.zeros(2, dtype=torch.long)
        y_zero = mixer(x, no_prefix)
        assert_close(y_zero, mixer(x))
        for t in (0, 5, 17):
            changed = x.clone()
            changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :]) * 3
            y_changed = mixer(changed, no_prefix)
            assert_close(y_changed[:, : t + 1], y_zero[:, : t + 1])
            assert not torch.allclose(y_changed[:, t + 1 :], y_zero[:, t + 1 :])


def _tensors(state) -> list[torch.Tensor]:
    """Every tensor in a state made of tensors, dataclasses, dicts, lists and tuples, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if dataclasses.is_dataclass(state):
        return [t for f in dataclasses.fields(state) for t in _tensors(getattr(state, f.name))]
    if isinstance(state, dict):
        return [t for value in state.values() for t in _tensors(value)]
    if isinstance(state, (list, tuple)):
        return [t for value in state for t in _tensors(value)]
    return []


@pytest.mark.parametrize("key", ["attention", "linear_attention", "h3", "retnet", "gla", "mla", "deltanet",
                                 "pla"])
def test_the_shared_width_check_names_the_mixer(key):
    config = rk.MIXERS[key].Config(name=key, num_heads=4)
    config.check_width(16)
    with pytest.raises(ValueError, match=f"d_model=10 is not divisible by {key} num_heads=4"):
        config.check_width(10)


def test_describe_defaults_to_the_name():
    assert [rk.MIXERS[k].Config(name=k).describe() for k in ("deltanet", "gated_deltanet")] == [
        "deltanet", "gated_deltanet"]
