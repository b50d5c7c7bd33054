"""Log-linear gated linear attention with a scalar decay (Guo, Yang, Goel, Xing, Dao, Kim 2025,
"Log-Linear Attention", arXiv 2506.04761): the Mamba-2 recurrence over a Fenwick partition of the prefix.

The prefix of query t (0-indexed, t tokens before it) is split into buckets by the Fenwick tree of t:
level 0 is the token itself, and level l >= 1 exists when bit l - 1 of t is set and holds the 2^{l-1}
tokens s < t that agree with t above bit l - 1 and have that bit clear. Equivalently the level of a pair
s <= t is level(t, s) = bit_length(t XOR s). Each level keeps its own scalar-gated state
S_t^(l) = sum_{s in bucket l} exp(c_t - c_s) k_s v_s^T (c the cumulative log-decay, one per head), and
y_t = sum_l lam_t^(l) S_t^(l)^T q_t with a weight lam_t^(l) per token, head and level. The parallel form
is Y = ((Q K^T) ⊙ M^S ⊙ M^H) V with the Mamba-2 decay mask M^S_ts = exp(c_t - c_s) and the
hierarchical mask M^H_ts = lam_t^{level(t, s)} (s <= t).

The recurrent state after p tokens holds one (Dk, Dv) slot per bit of p, L(p) = bit_length(p) =
floor(log2 p) + 1 slots (0 for p = 0): slot j holds level j + 1 for the next query where bit j of p is
set and is zero where it is clear (a dead level). It is held as :class:`LogLinearState` (the slots,
lowest bit first, and p) and grows by one slot each time p reaches a power of two: the O(log T) memory
decoding to T must provision, not the popcount(p) live levels alone. A new token t is a Fenwick
increment of p = t: every state decays by exp(g_t), then the token and the levels of the trailing one
bits of t merge into the level of t's lowest zero bit (a binary carry). q, k: (B, H, T, Dk);
v: (B, H, T, Dv); g: (B, H, T), <= 0; lam: (B, H, T, L) with L > bit_length(last position), level l in
column l. Three forms:

- :func:`log_linear_recurrent`: the token loop with its Fenwick updates, the spec;
- :func:`log_linear_quadratic`: the masked (T, T) form above, from the empty state;
- :func:`log_linear_chunked`: the paper's chunkwise algorithm, the fast path for training and prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.numerics import compute_dtype, masked_exp
from recallkit.ops.segments import chunk_length, in_segments, segment_length


@dataclass
class LogLinearState:
    """The Fenwick states after ``position`` tokens: one slot per bit of ``position``, zero where clear."""

    levels: Tensor  # (B, H, level_slots(position), Dk, Dv): slot j holds level j + 1 if bit j is set, else 0
    position: int  # tokens seen so far (the same for every sequence of the batch)


def live_levels(position: int) -> list[int]:
    """The set bits j of ``position``: the levels j + 1 whose buckets are alive after that many tokens."""
    return [j for j in range(position.bit_length()) if position >> j & 1]


def level_slots(position: int) -> int:
    """The state's slots after ``position`` tokens: floor(log2 position) + 1 (its bit_length), 0 at 0."""
    return position.bit_length()


def _bit_length(x: Tensor, width: int) -> Tensor:
    """bit_length of each non-negative integer of x (< 2^width), exactly: the powers of two <= x."""
    powers = 2 ** torch.arange(width, device=x.device)
    return (x[..., None] >= powers).sum(-1)


def _check(q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Tensor, state: LogLinearState | None) -> int:
    """Checks the shapes; returns the position of the first token."""
    if k.shape != q.shape or v.shape[:3] != q.shape[:3] or g.shape != q.shape[:3]:
        raise ValueError(f"q, k must be (B, H, T, Dk), v (B, H, T, Dv) and g (B, H, T); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}, {tuple(g.shape)}")
    start = 0 if state is None else state.position
    end = start + q.shape[2]
    needed = max(end - 1, 0).bit_length() + 1
    if lam.dim() != 4 or lam.shape[:3] != q.shape[:3] or lam.shape[3] < needed:
        raise ValueError(f"lam must be (B, H, T, L) = {tuple(q.shape[:3])} + (L,) with L >= {needed} levels "
                         f"for positions up to {end - 1}; got {tuple(lam.shape)}")
    if state is not None:
        B, H, _, Dk = q.shape
        expected = (B, H, level_slots(start), Dk, v.shape[-1])
        if tuple(state.levels.shape) != expected:
            raise ValueError(f"state.levels must be {expected} after {start} tokens (one slot per bit); "
                             f"got {tuple(state.levels.shape)}")
    return start


def _dense(state: LogLinearState | None, q: Tensor, v: Tensor, slots: int) -> Tensor:
    """(B, H, slots, Dk, Dv): slot j holds the state of bit j, zero where the bit is clear.

    The state's slots of clear bits are zeroed here, whatever they hold, so every form ignores them alike;
    slots above the state's (bits the later positions reach) start as zeros.
    """
    B, H, _, Dk = q.shape
    ct = compute_dtype(q)
    if state is None:
        return torch.zeros(B, H, slots, Dk, v.shape[-1], device=q.device, dtype=ct)
    held = state.levels.shape[2]
    live = torch.tensor([state.position >> j & 1 for j in range(held)], device=q.device, dtype=ct)
    levels = state.levels.to(ct) * live[:, None, None]
    return F.pad(levels, (0, 0, 0, 0, 0, slots - held))


def init_log_linear_state(q: Tensor, v: Tensor) -> LogLinearState:
    """The empty state (no slot) for inputs shaped like q (B, H, T, Dk) and v (B, H, T, Dv)."""
    return LogLinearState(_dense(None, q, v, 0), 0)


def log_linear_recurrent(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Tensor, *, state: LogLinearState | None = None
) -> tuple[Tensor, LogLinearState]:
    """Token-by-token Fenwick recurrence (the reference).

    Args:
        q, k: queries and keys, (B, H, T, Dk).
        v: values, (B, H, T, Dv).
        g: log-decays, (B, H, T), <= 0.
        lam: level weights, (B, H, T, L), column l for level l (0: the token itself).
        state: the Fenwick states from a previous call, or None for the empty state at position 0.
    Returns:
        y (B, H, T, Dv) in v's dtype and the state after the last token (levels float32+).
    """
    start = _check(q, k, v, g, lam, state)
    ct = compute_dtype(q)
    q_, k_, v_, g_, lam_ = (t.to(ct) for t in (q, k, v, g, lam))
    slots = list(_dense(state, q, v, level_slots(start + q.shape[2])).unbind(2))  # each (B, H, Dk, Dv)
    outputs = []
    for i in range(q.shape[2]):
        t = start + i
        slots = [g_[:, :, i, None, None].exp() * S for S in slots]  # every bucket decays by a_t
        q_t, k_t, v_t, lam_t = q_[:, :, i], k_[:, :, i], v_[:, :, i], lam_[:, :, i]
        y_t = (lam_t[..., :1] * (q_t * k_t).sum(-1, keepdim=True)) * v_t  # level 0: the token itself
        for j in live_levels(t):  # level j + 1: the bucket of bit j of t
            y_t = y_t + lam_t[..., j + 1, None] * torch.einsum("bhk,bhkv->bhv", q_t, slots[j])
        outputs.append(y_t)
        carry = (t ^ (t + 1)).bit_length() - 1  # trailing one bits of t: the increment's carry
        merged = k_t[..., :, None] * v_t[..., None, :] + sum(slots[:carry], torch.zeros_like(slots[0]))
        slots = [torch.zeros_like(merged)] * carry + [merged] + slots[carry + 1:]
    y = torch.stack(outputs, dim=2) if outputs else v_[:, :, :0]
    end = start + q.shape[2]
    levels = torch.stack(slots, dim=2) if slots else _dense(state, q, v, 0)  # dead slots are zeros here
    return y.to(v.dtype), LogLinearState(levels, end)


def log_linear_quadratic(q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Tensor) -> Tensor:
    """Masked quadratic form from the empty state: Y = ((Q K^T) ⊙ M^S ⊙ M^H) V.

    M^S_ts = exp(c_t - c_s) and M^H_ts = lam_t^{bit_length(t XOR s)} for s <= t, 0 above the diagonal.
    The cumulative sum runs over the whole sequence: a test reference, not for long float32 inputs.

    Args:
        q, k: (B, H, T, Dk); v: (B, H, T, Dv); g: (B, H, T); lam: (B, H, T, L).
    Returns:
        y (B, H, T, Dv) in v's dtype.
    """
    _check(q, k, v, g, lam, None)
    ct = compute_dtype(q)
    q_, k_, v_, lam_ = (t.to(ct) for t in (q, k, v, lam))
    T = q.shape[2]
    cum = torch.cumsum(g.to(ct), dim=2)  # (B, H, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    pos = torch.arange(T, device=q.device)
    level = torch.where(causal, _bit_length(pos[:, None] ^ pos[None, :], T.bit_length()), 0)  # (T, T)
    hier = torch.take_along_dim(lam_, level[None, None], dim=-1)  # (B, H, T, T): M^H
    decay = masked_exp(cum[..., :, None] - cum[..., None, :], causal)  # (B, H, T, T): M^S
    return (((q_ @ k_.transpose(-1, -2)) * decay * hier) @ v_).to(v.dtype)


def _chunk_maps(start: int, T: int, C: int, slots: int, levels: int, device: torch.device):
    """The position-only index maps of the chunkwise form, for chunks of C tokens from ``start``.

    With a chunk covering positions [a, b) and its query t: a pair s <= t inside the chunk has level
    bit_length(t XOR s) (``intra``, (N, C, C)); the bucket of bit j in the state before the chunk
    reaches t at level max(j + 1, bit_length(t XOR a)) (``inter``, (N, C, slots): the buckets below
    the highest bit where t and a differ have merged for t); a token s of the chunk ends in bit
    bit_length(b XOR s) - 1 of the state after it (``write``, (N, C, slots), 0 for padding); the bucket
    of bit j before the chunk ends in bit max(j, bit_length(a XOR b) - 1) (``move``, (N, slots, slots),
    new bit by old bit). Level indices are capped at ``levels`` - 1 where they only meet zeros.
    """
    N = -(-T // C)
    pos = start + torch.arange(N * C, device=device).view(N, C)  # (N, C) absolute positions
    a = pos[:, :1]  # (N, 1) chunk starts
    b = (a + C).clamp(max=start + T)  # (N, 1) chunk ends; the last chunk may be partial
    width = (start + N * C).bit_length() + 1
    bits = torch.arange(slots, device=device)
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()
    intra = torch.where(causal, _bit_length(pos[:, :, None] ^ pos[:, None, :], width), 0)
    inter = torch.maximum(bits + 1, _bit_length(pos ^ a, width)[..., None])
    write = (_bit_length(b ^ pos, width)[..., None] - 1 == bits) & (pos < b)[..., None]
    move = torch.maximum(bits, _bit_length(a ^ b, width) - 1)[:, None, :] == bits[:, None]
    return intra.clamp(max=levels - 1), inter.clamp(max=levels - 1), write, move


def log_linear_chunked(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, lam: Tensor, *, state: LogLinearState | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, LogLinearState]:
    """Chunkwise-parallel form (the paper's chunkwise algorithm, any chunk size and start position).

    Inside a chunk: Y = ((Q K^T) ⊙ M^S ⊙ M^H) V on the chunk's (C, C) block, with chunk-local cumulative
    log-decays c (<= 0). Across chunks: the dense Fenwick states before the chunk, one per bit j
    (zero where the bit is clear), read by query t as lam_t^{max(j+1, bit_length(t XOR a))}
    (q_t ⊙ exp(c_t))^T S_j: log T small GEMMs per chunk, O(T log T) in all. The states cross a chunk
    as S'_{j'} = exp(c_C) sum_{j -> j'} S_j + sum_{s -> j'} exp(c_C - c_s) k_s v_s^T, the carry of the
    Fenwick increments from a to b folded into one 0/1 map (see :func:`_chunk_maps`). Padding of a
    partial last chunk uses k = v = 0 and g = 0 and is cut from y. Same arguments and returns as
    :func:`log_linear_recurrent`, plus ``chunk_size``.
    """
    start = _check(q, k, v, g, lam, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
    ct = compute_dtype(q)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    if T == 0:
        return v[:, :, :0], LogLinearState(_dense(state, q, v, level_slots(start)), start)
    if T > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(log_linear_chunked, {"q": q, "k": k, "v": v, "g": g, "lam": lam}, state=state,
                           length=segment_length(chunk_size), chunk_size=chunk_size)
    C, slots, L = chunk_length(T, chunk_size), level_slots(start + T), lam.shape[-1]
    pad = (-T) % C
    q_, k_, v_, lam_ = (F.pad(t.to(ct), (0, 0, 0, pad)) for t in (q, k, v, lam))
    N = q_.shape[2] // C
    qc, kc, vc, lamc = (t.reshape(B, H, N, C, t.shape[-1]) for t in (q_, k_, v_, lam_))  # (B, H, N, C, .)
    # the sums and their differences c_t - c_s in float64: after a strong decay both are large, and
    # float32 sums would round each to ulp(|c|), an error the difference keeps (as gated_linear_attention)
    c64 = torch.cumsum(F.pad(g, (0, pad)).reshape(B, H, N, C), dim=-1, dtype=torch.float64)  # <= 0
    cum, last = c64.to(ct), c64[..., -1:].to(ct)  # (B, H, N, C), (B, H, N, 1): the whole chunk's
    intra, inter, write, move = _chunk_maps(start, T, C, slots, L, q.device)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    hier = torch.take_along_dim(lamc, intra[None, None], dim=-1)  # (B, H, N, C, C): M^H
    segsum = (c64[..., :, None] - c64[..., None, :]).to(ct)  # (B, H, N, C, C): c_t - c_s
    scores = (qc @ kc.transpose(-1, -2)) * masked_exp(segsum, causal) * hier
    y = scores @ vc  # (B, H, N, C, Dv)
    k_d = kc * (c64[..., -1:] - c64).to(ct).exp()[..., None]  # keys as carried to the end of the chunk
    # (B, H, N, slots, C, Dk): the keys of the tokens that end in each bit
    k_w = write.transpose(-1, -2).to(ct)[None, None, ..., None] * k_d[:, :, :, None]
    written = k_w.transpose(-1, -2) @ vc[:, :, :, None]  # (B, H, N, slots, Dk, Dv)
    decay, move = last.exp()[..., None, None], move.to(ct)  # (B, H, N, 1, 1, 1), (N, slots, slots)
    S = _dense(state, q, v, slots)  # (B, H, slots, Dk, Dv)
    befores = []
    # chunk views by unbind, whose backward stacks their gradients once (a slice's is a zero-filled copy
    # of the whole tensor): 1.05-1.27x forward + backward, measured
    for decay_c, move_c, written_c in zip(decay.unbind(2), move.unbind(0), written.unbind(2)):
        befores.append(S)  # the Fenwick increments of one chunk: decay, carry, write
        S = decay_c * torch.einsum("ij,bhjkv->bhikv", move_c, S) + written_c
    S_before = torch.stack(befores, dim=2)  # (B, H, N, slots, Dk, Dv)
    weights = torch.take_along_dim(lamc, inter[None, None], dim=-1)  # (B, H, N, C, slots)
    q_s = qc * cum.exp()[..., None]  # queries as they see the state before the chunk
    # sum_j w_tj (q_s,t)^T S_j as one GEMM: [w_t0 q_s,t, w_t1 q_s,t, ...] @ [S_0; S_1; ...]
    q_w = (weights[..., None] * q_s[..., None, :]).reshape(B, H, N, C, slots * Dk)
    y = y + q_w @ S_before.reshape(B, H, N, slots * Dk, Dv)
    return y.reshape(B, H, N * C, Dv)[:, :, :T].to(v.dtype), LogLinearState(S, start + T)  # dead slots: 0
