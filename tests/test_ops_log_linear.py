"""Log-linear (Fenwick) scalar-gate attention: chunked == quadratic == the token loop's Fenwick updates,
forward and backward, from any start position; the partition is the paper's; lam = 1 is Mamba-2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recallkit import ops
from recallkit.ops.log_linear import LogLinearState, level_slots, live_levels

CHUNK_SIZES = [1, 3, 4, 7, 8, 16, 23, 64]  # 3, 7, 16 do not divide T = 23; 23 and 64 are one chunk
START = 13  # 0b1101: four slots in the starting state, three live levels and the dead slot of bit 1


def qkvgl(B=2, H=2, T=23, Dk=5, Dv=3, L=7, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    k = torch.randn(B, H, T, Dk, generator=gen, dtype=dtype)
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=dtype)
    g = -F.softplus(torch.randn(B, H, T, generator=gen, dtype=dtype))
    lam = F.softplus(torch.randn(B, H, T, L, generator=gen, dtype=dtype))
    return q, k, v, g, lam


def live_mask(position: int, dtype=torch.float64) -> torch.Tensor:
    """(slots, 1, 1): 1 for the slots of set bits of ``position``, 0 for the dead ones."""
    live = [float(position >> j & 1) for j in range(level_slots(position))]
    return torch.tensor(live, dtype=dtype)[:, None, None]


def start_state(B=2, H=2, Dk=5, Dv=3, position=START, seed=9, dtype=torch.float64, dead=0.0):
    """Random live levels; the dead slots hold ``dead`` (zero in a real state)."""
    gen = torch.Generator().manual_seed(seed)
    levels = torch.randn(B, H, level_slots(position), Dk, Dv, generator=gen, dtype=dtype)
    mask = live_mask(position, dtype)
    return LogLinearState(levels * mask + dead * (1 - mask), position)


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
@pytest.mark.parametrize("from_state", [False, True])
def test_log_linear_chunked_equals_recurrent(chunk_size, from_state):
    q, k, v, g, lam = qkvgl()
    state = start_state() if from_state else None
    y_rec, s_rec = ops.log_linear_recurrent(q, k, v, g, lam, state=state)
    y_chunk, s_chunk = ops.log_linear_chunked(q, k, v, g, lam, state=state, chunk_size=chunk_size)
    torch.testing.assert_close(y_chunk, y_rec, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(s_chunk.levels, s_rec.levels, atol=1e-12, rtol=1e-12)
    end = 23 + (START if from_state else 0)
    assert s_rec.position == s_chunk.position == end
    assert s_rec.levels.shape == (2, 2, end.bit_length(), 5, 3)  # floor(log2 end) + 1 slots
    dead = (1 - live_mask(end))[None, None]
    assert not (s_rec.levels * dead).any() and not (s_chunk.levels * dead).any()  # dead slots held as 0


def test_log_linear_state_has_a_slot_per_bit_and_grows_at_powers_of_two():
    q, k, v, g, lam = qkvgl(B=1, H=1, T=17, L=6)
    state = None
    for t in range(17):
        _, state = ops.log_linear_recurrent(*(x[:, :, t : t + 1] for x in (q, k, v, g, lam)), state=state)
        assert state.levels.shape[2] == level_slots(t + 1) == (t + 1).bit_length()
        assert [j for j in range(level_slots(t + 1)) if state.levels[0, 0, j].any()] == live_levels(t + 1)
    assert [level_slots(p) for p in (0, 1, 2, 3, 4, 7, 8, 64, 1023, 1024)] == [0, 1, 2, 2, 3, 3, 4, 7, 10, 11]


@pytest.mark.parametrize("chunk_size", [None, 3, 8])
def test_log_linear_ignores_what_dead_slots_hold(chunk_size):
    q, k, v, g, lam = qkvgl()
    outs = []
    for dead in (0.0, 7.0):
        state = start_state(dead=dead)
        if chunk_size is None:
            outs.append(ops.log_linear_recurrent(q, k, v, g, lam, state=state))
        else:
            outs.append(ops.log_linear_chunked(q, k, v, g, lam, state=state, chunk_size=chunk_size))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=0, rtol=0)
    torch.testing.assert_close(outs[1][1].levels, outs[0][1].levels, atol=0, rtol=0)


def test_log_linear_quadratic_equals_recurrent():
    q, k, v, g, lam = qkvgl()
    y_rec, _ = ops.log_linear_recurrent(q, k, v, g, lam)
    torch.testing.assert_close(ops.log_linear_quadratic(q, k, v, g, lam), y_rec, atol=1e-12, rtol=1e-12)


def paper_buckets(t: int) -> list[tuple[int, list[int]]]:
    """The Fenwick partition of [0, t] (paper section 3.1): level 0 = {t}, then peel the least
    significant set bit of the remaining prefix length: [r - lssb(r), r) at level log2(lssb(r)) + 1."""
    buckets, r = [(0, [t])], t
    while r:
        low = r & -r
        buckets.append((low.bit_length(), list(range(r - low, r))))
        r -= low
    return buckets


def test_log_linear_is_the_papers_partition_with_its_masks():
    # y_t = sum over buckets of lam_t^(l) sum_s exp(c_t - c_s) (q_t . k_s) v_s, typed out from the paper
    q, k, v, g, lam = qkvgl(B=1, H=1, T=21)
    y, _ = ops.log_linear_recurrent(q, k, v, g, lam)
    cum = g[0, 0].cumsum(0)
    for t in range(21):
        parts = paper_buckets(t)
        assert sorted(s for _, bucket in parts for s in bucket) == list(range(t + 1))
        assert len(parts) <= max(t, 1).bit_length() + 1
        assert all(len(bucket) == 2 ** max(level - 1, 0) for level, bucket in parts)
        expected = sum(lam[0, 0, t, level] * (cum[t] - cum[s]).exp() * (q[0, 0, t] @ k[0, 0, s]) * v[0, 0, s]
                       for level, bucket in parts for s in bucket)
        torch.testing.assert_close(y[0, 0, t], expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [4, 7])
def test_log_linear_with_equal_level_weights_is_mamba2(chunk_size):
    # lam = 1 on every level merges the buckets back into one state: scalar-gated linear attention
    q, k, v, g, lam = qkvgl()
    state = start_state()
    y_ref, s_ref = ops.gated_linear_attention_recurrent(q, k, v, g, state=state.levels.sum(2))
    ones = torch.ones_like(lam)
    for y, s in (ops.log_linear_recurrent(q, k, v, g, ones, state=state),
                 ops.log_linear_chunked(q, k, v, g, ones, state=state, chunk_size=chunk_size)):
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(s.levels.sum(2), s_ref, atol=1e-12, rtol=1e-12)


def test_log_linear_loop_state_resumes_exactly():
    q, k, v, g, lam = qkvgl()
    y_full, s_full = ops.log_linear_recurrent(q, k, v, g, lam)
    for split in (1, 8, 9, 16):
        _, s_head = ops.log_linear_recurrent(*(t[:, :, :split] for t in (q, k, v, g, lam)))
        tail = [t[:, :, split:] for t in (q, k, v, g, lam)]
        for y_tail, s_tail in (ops.log_linear_recurrent(*tail, state=s_head),
                               ops.log_linear_chunked(*tail, state=s_head, chunk_size=4)):
            torch.testing.assert_close(y_tail, y_full[:, :, split:], atol=1e-12, rtol=1e-12)
            torch.testing.assert_close(s_tail.levels, s_full.levels, atol=1e-12, rtol=1e-12)


def test_log_linear_gradients_agree():
    grads = []
    for chunk_size in (None, 4, 5, 13, 32):  # 5 does not divide T = 13; 13 and 32 are one chunk
        inputs = [t.requires_grad_() for t in qkvgl(T=13, seed=3)]
        levels = start_state().levels.requires_grad_()
        state = LogLinearState(levels, START)
        if chunk_size is None:
            y, s = ops.log_linear_recurrent(*inputs, state=state)
        else:
            y, s = ops.log_linear_chunked(*inputs, chunk_size=chunk_size, state=state)
        weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        ((y * weights).sum() + s.levels.square().sum()).backward()
        grads.append([t.grad for t in (*inputs, levels)])
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-10)


def test_log_linear_gradcheck_chunked():
    inputs = [t.requires_grad_() for t in qkvgl(B=1, H=1, T=6, Dk=3, Dv=2, L=5, seed=5)]
    levels = start_state(B=1, H=1, Dk=3, Dv=2, position=5).levels.requires_grad_()

    def f(q, k, v, g, lam, levels):
        y, s = ops.log_linear_chunked(q, k, v, g, lam, state=LogLinearState(levels, 5), chunk_size=4)
        return y, s.levels

    assert torch.autograd.gradcheck(f, (*inputs, levels))


def test_log_linear_float32_long_sequence_matches_float64():
    q, k, v, g, lam = qkvgl(B=1, H=2, T=600, Dk=16, Dv=8, L=11)  # > 512: runs in segments
    g = g * 0.05
    y64, s64 = ops.log_linear_recurrent(q, k, v, g, lam)
    y32, s32 = ops.log_linear_chunked(*(t.float() for t in (q, k, v, g, lam)), chunk_size=64)
    assert s32.levels.dtype == torch.float32 and s32.position == 600
    torch.testing.assert_close(y32, y64.float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s32.levels, s64.levels.float(), atol=1e-4, rtol=1e-4)


def test_log_linear_empty_sequence_and_bad_shapes():
    q, k, v, g, lam = qkvgl(T=0)
    y, s = ops.log_linear_chunked(q, k, v, g, lam)
    assert y.shape == (2, 2, 0, 3) and s.levels.shape == (2, 2, 0, 5, 3) and s.position == 0
    q, k, v, g, lam = qkvgl(T=4)
    with pytest.raises(ValueError, match="lam must be"):
        ops.log_linear_chunked(q, k, v, g, lam[..., :2])  # positions 0..3 need levels 0..2
    with pytest.raises(ValueError, match="g \\(B, H, T\\)"):
        ops.log_linear_recurrent(q, k, v, g[..., None], lam)
    with pytest.raises(ValueError, match="one slot per bit"):
        ops.log_linear_recurrent(q, k, v, g, lam, state=LogLinearState(start_state().levels, 4))
