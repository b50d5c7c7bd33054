"""Forgetting attention (FoX, arXiv 2503.02130): the chunked SDPA form == the token loop, forward and
backward, from an empty and a nonempty cache, and both == the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from recallkit.ops.forgetting_attention import ForgetCache

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk


def qkvf(B=2, H=2, T=23, Dk=5, Dv=3, seed=0, dtype=torch.float64, strength=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, H, T, Dk, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    log_f = F.logsigmoid(torch.randn(B, H, T, generator=gen, dtype=dtype) + 1) * strength
    return q, k, v, log_f


def start_cache(B=2, H=2, S=6, Dk=5, Dv=3, seed=9, dtype=torch.float64) -> ForgetCache:
    """A nonempty cache of S tokens with decreasing (older = more forgotten) biases ending in 0."""
    gen = torch.Generator().manual_seed(seed)
    key, value = torch.randn(B, H, S, Dk, generator=gen, dtype=dtype), torch.randn(B, H, S, Dv, generator=gen,
                                                                                   dtype=dtype)
    steps = F.logsigmoid(torch.randn(B, H, S, generator=gen, dtype=dtype) + 1)
    decay = torch.cat([steps[..., 1:].flip(-1).cumsum(-1).flip(-1), steps[..., :1] * 0], dim=-1)
    return ForgetCache(key, value, decay)


def paper_formula(q, k, v, log_f):
    """o_i = sum_j softmax_j(q_i.k_j / sqrt(d) + log prod_{l=j+1..i} f_l) v_j, j <= i, from an empty cache."""
    B, H, T, Dk = q.shape
    f = log_f.exp()
    y = torch.zeros(B, H, T, v.shape[-1], dtype=q.dtype)
    for i in range(T):
        logits = []
        for j in range(i + 1):
            forget = torch.ones(B, H, dtype=q.dtype)
            for m in range(j + 1, i + 1):
                forget = forget * f[:, :, m]
            logits.append((q[:, :, i] * k[:, :, j]).sum(-1) / math.sqrt(Dk) + forget.log())
        weights = torch.stack(logits, dim=-1).softmax(dim=-1)  # (B, H, i + 1)
        y[:, :, i] = torch.einsum("bhj,bhjd->bhd", weights, v[:, :, : i + 1])
    return y


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_forgetting_chunked_equals_recurrent(chunk_size, from_state):
    q, k, v, log_f = qkvf()
    state = start_cache() if from_state else None
    y_rec, s_rec = ops.forgetting_attention_recurrent(q, k, v, log_f, state=state)
    y_chunk, s_chunk = ops.forgetting_attention_chunked(q, k, v, log_f, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    for a, b in zip(s_chunk, s_rec):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    S = 23 + (6 if from_state else 0)
    assert [tuple(t.shape) for t in s_rec] == [(2, 2, S, 5), (2, 2, S, 3), (2, 2, S)]


def test_forgetting_recurrence_is_the_paper_formula():
    q, k, v, log_f = qkvf(T=7)
    y, state = ops.forgetting_attention_recurrent(q, k, v, log_f)
    torch.testing.assert_close(y, paper_formula(q, k, v, log_f), atol=1e-12, rtol=1e-12)
    c = log_f.cumsum(-1)  # c_j = sum_{l<=j} log f_l; the cache holds c_t - c_j
    torch.testing.assert_close(state.decay, c[..., -1:] - c, atol=1e-12, rtol=1e-12)


def test_forgetting_with_open_gates_is_causal_softmax_attention():
    q, k, v, log_f = qkvf()
    y, _ = ops.forgetting_attention_chunked(q, k, v, torch.zeros_like(log_f), chunk_size=7)
    torch.testing.assert_close(y, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_forgetting_chunked_resumes_from_a_state():
    q, k, v, log_f = qkvf()
    y_full, s_full = ops.forgetting_attention_recurrent(q, k, v, log_f, state=start_cache())
    head = [t[:, :, :9] for t in (q, k, v, log_f)]
    tail = [t[:, :, 9:] for t in (q, k, v, log_f)]
    _, s_head = ops.forgetting_attention_chunked(*head, state=start_cache(), chunk_size=4)
    y_tail, s_tail = ops.forgetting_attention_chunked(*tail, state=s_head, chunk_size=5)
    torch.testing.assert_close(y_tail, y_full[:, :, 9:])
    for a, b in zip(s_tail, s_full):
        torch.testing.assert_close(a, b)


def test_forgetting_gradients_agree_from_a_nonempty_cache():
    grads = []
    for chunk_size in (None, 1, 4, 5, 13):  # 4, 5 do not divide T = 13; 13 is one chunk
        inputs = [t.requires_grad_() for t in qkvf(T=13, seed=3)]
        state = ForgetCache(*(t.requires_grad_() for t in start_cache()))
        if chunk_size is None:
            y, s = ops.forgetting_attention_recurrent(*inputs, state=state)
        else:
            y, s = ops.forgetting_attention_chunked(*inputs, state=state, chunk_size=chunk_size)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        ((y * weights).sum() + sum(t.sin().sum() for t in s)).backward()
        grads.append([t.grad for t in (*inputs, *state)])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [2, 8])
def test_forgetting_gradcheck_chunked(chunk_size):
    inputs = [t.requires_grad_() for t in qkvf(B=1, H=1, T=5, Dk=3, Dv=2, seed=5)]
    state = [t.requires_grad_() for t in start_cache(B=1, H=1, S=3, Dk=3, Dv=2)]

    def f(q, k, v, log_f, key, value, decay):
        y, s = ops.forgetting_attention_chunked(q, k, v, log_f, state=ForgetCache(key, value, decay),
                                                chunk_size=chunk_size)
        return y, s.decay

    assert torch.autograd.gradcheck(f, (*inputs, *state))


def test_forgetting_float32_long_sequence_matches_float64():
    q, k, v, log_f = qkvf(B=1, H=2, T=600, Dk=16, Dv=8, strength=0.2)
    y64, s64 = ops.forgetting_attention_recurrent(q, k, v, log_f)
    y32, s32 = ops.forgetting_attention_chunked(*(t.float() for t in (q, k, v, log_f)), chunk_size=64)
    assert s32.decay.dtype == torch.float32
    torch.testing.assert_close(y32, y64.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s32.decay, s64.decay.float(), atol=1e-4, rtol=1e-5)


def test_forgetting_strong_gates_stay_finite_and_read_the_last_token():
    q, k, v, _ = qkvf(T=40, dtype=torch.float32)
    log_f = -50 - torch.rand(2, 2, 40)  # f < 2e-22: each query sees only its own token
    q, k, v, log_f = (t.requires_grad_() for t in (q, k, v, log_f))
    y, s = ops.forgetting_attention_chunked(q, k, v, log_f, chunk_size=16)
    assert torch.isfinite(y).all() and torch.isfinite(s.decay).all()
    torch.testing.assert_close(y, v.detach(), atol=1e-4, rtol=1e-4)  # everything before is forgotten
    y.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v, log_f))


def test_forgetting_empty_sequence_and_bad_shapes():
    q, k, v, log_f = qkvf(T=0)
    y, s = ops.forgetting_attention_chunked(q, k, v, log_f)
    assert y.shape == (2, 2, 0, 3) and s.key.shape == (2, 2, 0, 5) and s.decay.shape == (2, 2, 0)
    y, s = ops.forgetting_attention_recurrent(q, k, v, log_f, state=start_cache())
    assert y.shape == (2, 2, 0, 3) and torch.equal(s.decay, start_cache().decay)
    q, k, v, log_f = qkvf(T=4)
    with pytest.raises(ValueError, match="one forget gate per head and token"):
        ops.forgetting_attention_chunked(q, k, v, log_f[..., None])
    with pytest.raises(ValueError, match=r"q, k must be \(B, H, T, Dk\)"):
        ops.forgetting_attention_recurrent(q, k[..., :2], v, log_f)
    with pytest.raises(ValueError, match="state must hold"):
        ops.forgetting_attention_chunked(q, k, v, log_f, state=start_cache(Dv=4))
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ops.forgetting_attention_chunked(q, k, v, log_f, chunk_size=0)
