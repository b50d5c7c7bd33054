"""A bfloat16 model keeps its memory in float32: the kernels whose state is a running sum over every
token (linear attention, PLA's encoder term, H3's diagonal SSM) return y in the inputs' dtype and the
state in float32, as the gated kernels already did (``ops.numerics.compute_dtype``). Summed in
bfloat16, the state below was off by up to 9e-3 (chunked) and 0.17 (token loop) relative to the exact
sum; H3's token loop failed outright on bfloat16 inputs with float32 parameters."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit import ops

T, H, DK, DV, N = 600, 2, 4, 3, 3


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.rand(2, H, T, DK, generator=g).to(torch.bfloat16) for _ in range(2))  # feature-mapped: >= 0
    v = torch.rand(2, H, T, DV, generator=g).to(torch.bfloat16)
    return q, k, v


def _ssm():
    A = -torch.tensor([[1e-3, 2e-3, 5e-3]]).repeat(H, 1)  # slow decays: the state sums hundreds of tokens
    return A, torch.ones(H, N), torch.full((H, N), 0.5), torch.ones(H), torch.ones(H)  # A, B, C, dt, D


def _linear_attention_state(q, k, v):  # S = sum_t k_t [v_t, 1]^T in float64, from the definition
    v1 = torch.cat([v.double(), torch.ones_like(v[..., :1]).double()], dim=-1)
    return torch.einsum("bhtf,bhtd->bhfd", k.double(), v1)


def _h3_state(k, v, A, B, dt):  # S[n] = sum_t a_n^(T-1-t) B_n k_t v_t^T in float64
    a = torch.exp(dt[:, None] * A).double()  # (H, N)
    powers = a[..., None] ** torch.arange(T - 1, -1, -1, dtype=torch.float64)  # (H, N, T)
    return torch.einsum("hnt,bhtf,bhtd->bhnfd", B.double()[..., None] * powers, k.double(), v.double())


CASES = {
    "linear_attention_recurrent": lambda q, k, v: ops.linear_attention_recurrent(q, k, v),
    "linear_attention_chunked": lambda q, k, v: ops.linear_attention_chunked(q, k, v, chunk_size=64),
    "h3_ssm_recurrent": lambda q, k, v: ops.h3_ssm_recurrent(q, k, v, *_ssm()),
    "h3_ssm_chunked": lambda q, k, v: ops.h3_ssm_chunked(q, k, v, *_ssm(), chunk_size=64),
}


@pytest.mark.parametrize("name", CASES)
def test_a_bfloat16_kernel_sums_its_state_in_float32(name):
    q, k, v = _inputs()
    y, state = CASES[name](q, k, v)
    assert y.dtype == torch.bfloat16 and state.dtype == torch.float32
    A, B, _, dt, _ = _ssm()
    exact = _linear_attention_state(q, k, v) if name.startswith("linear") else _h3_state(k, v, A, B, dt)
    torch.testing.assert_close(state.double(), exact, rtol=1e-5, atol=0)


@pytest.mark.parametrize("mixer", ["linear_attention", "pla", "h3"])
def test_a_bfloat16_models_recurrent_memory_is_float32_in_prefill_init_and_step(mixer):
    model = rk.build_model(rk.ModelConfig(vocab_size=16, d_model=16, num_layers=1, mixer={"name": mixer},
                                          mlp="none")).to(torch.bfloat16)
    layer = model.blocks[0].mixer
    x = torch.randn(2, 8, 16).to(torch.bfloat16)
    memory = (lambda s: s.ssm) if mixer == "h3" else (lambda s: s)
    _, state = layer.prefill(x)
    assert memory(state).dtype == torch.float32
    fresh = layer.init_state(2, x.device, torch.bfloat16)
    assert memory(fresh).dtype == torch.float32
    y, stepped = layer.step(x[:, 0], fresh)
    assert y.dtype == torch.bfloat16 and memory(stepped).dtype == torch.float32
