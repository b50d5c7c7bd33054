"""Selective scan (Mamba-1): a diagonal SSM whose step size and input/output maps depend on the input.

Per channel d with N states (Gu & Dao 2023, arXiv 2312.00752, eq. 2a-2b with ZOH for A and
Euler for B):

    h_t = exp(dt_t * A) ⊙ h_{t-1} + (dt_t * x_t) B_t^T,      h: (Dn, N)
    y_t = h_t C_t + D ⊙ x_t

Layout: the model layout, time second. x, dt: (B, L, Dn) with dt >= 0; A: (Dn, N) with A < 0;
B_t and C_t: (B, L, N), shared by all channels; D: (Dn,) or None. The state h is (B, Dn, N) and
is kept in float32 (float64 for float64 inputs). Two forms with the same signature:

- :func:`selective_scan_recurrent`: the token loop, the spec;
- :func:`selective_scan_chunked`: chunkwise parallel, the fast path for training and prefill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from recallkit.ops.numerics import adjoints_allowed, compute_dtype, paths_fixed
from recallkit.ops.segments import in_segments, segment_length


def init_selective_state(x: Tensor, A: Tensor) -> Tensor:
    """Zero state (B, Dn, N) for inputs x (B, L, Dn) and A (Dn, N)."""
    return torch.zeros(x.shape[0], *A.shape, device=x.device, dtype=compute_dtype(x))


def selective_scan_recurrent(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, *,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token recurrence (the reference).

    Args:
        x: inputs, (B, L, Dn).
        dt: non-negative step sizes, (B, L, Dn).
        A: negative state matrix (diagonal per channel), (Dn, N).
        B, C: input and output maps, (B, L, N).
        D: skip gain, (Dn,), or None.
        state: h from a previous call, (B, Dn, N), or None for zeros.
    Returns:
        y (B, L, Dn) in x's dtype and the state h after the last token, (B, Dn, N).
    """
    ct = compute_dtype(x)
    h = init_selective_state(x, A) if state is None else state.to(ct)
    x_, dt_, A_, B_, C_ = (t.to(ct) for t in (x, dt, A, B, C))
    outputs = []
    # unbind: its backward is one stack, where indexing x[:, t] would build a full-size gradient per token
    for x_t, dt_t, B_t, C_t in zip(*(t.unbind(1) for t in (x_, dt_, B_, C_))):
        decay = torch.exp(dt_t[:, :, None] * A_)  # (B, Dn, N)
        h = decay * h + (dt_t * x_t)[:, :, None] * B_t[:, None, :]
        outputs.append(torch.einsum("bdn,bn->bd", h, C_t))
    y = torch.stack(outputs, dim=1) if outputs else x_[:, :0]
    if D is not None:
        y = y + D.to(ct) * x_
    return y.to(x.dtype), h


def selective_scan_chunked(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, *,
    state: Tensor | None = None, chunk_size: int = 32,
) -> tuple[Tensor, Tensor]:
    """Chunkwise-parallel form: a two-level scan, the loop's O(L Dn N) work in ~2 Lc + L / Lc steps.

    The sequence is cut into nc = L / Lc chunks and every step below updates all chunks at once:

    1. each chunk (but the last) scans its Lc tokens from a zero state: its end state ``local``;
    2. the start states follow chunk by chunk, h_{c+1} = exp(A sum_{t in c} dt_t) ⊙ h_c + local_c
       (nc - 1 small steps: the log decay of a chunk is A times a float32 sum of dt, <= 0);
    3. each chunk scans its tokens again from its true start state and reads out y.

    Why not the Mamba-2 style quadratic intra-chunk form: here the decay differs per (d, n), so
    the (Lc x Lc) matrix exists per channel and state, L * Lc * Dn * N numbers. Measured on CPU
    (B=1, Dn=256, N=16, L=1024) that form ran at 0.3-0.6x the token loop's speed (Lc = 8, 16),
    while this one is ~3.5x faster forward and ~4x forward + backward (Lc = 32, 64). It does
    twice the loop's arithmetic, so at large batch x width and short L, where the loop is
    already compute-bound, it is on par with the loop; with L <= Lc it is exactly one scan.

    Inside, states are state-major, (B, nc, N, Dn), and A is (N, Dn): the sums over N (the readout
    h C and the gradients of u and dt) then add rows of Dn numbers, where sums over an innermost
    N = 16 ran at half the speed. Same arguments and returns as :func:`selective_scan_recurrent` (the
    state returned is a transposed view of a state-major one). Under torch.func transforms (vmap) run
    it inside ``ops.numerics.fixed_paths()``, as every kernel; with ``first_order=True`` it keeps its
    written adjoint there.
    """
    Bsz, L, Dn = x.shape
    ct = compute_dtype(x)
    h0 = init_selective_state(x, A) if state is None else state.to(ct)
    if L > segment_length(chunk_size):  # cache blocking, see ops/segments.py
        return in_segments(selective_scan_chunked, {"x": x, "dt": dt, "B": B, "C": C}, state=h0,
                           length=segment_length(chunk_size), dim=1, A=A, D=D, chunk_size=chunk_size)
    x_, dt_, A_, B_, C_ = (t.to(ct) for t in (x, dt, A, B, C))
    if L == 0:
        return x_.to(x.dtype), h0
    Lc = min(chunk_size, L)
    pad = (-L) % Lc
    if pad:  # dt = 0 on padding: decay 1 and no input, so the last chunk ends in the state of token L - 1
        x_, dt_, B_, C_ = (F.pad(t, (0, 0, 0, pad)) for t in (x_, dt_, B_, C_))
    inputs = (x_, dt_, A_.t().contiguous(), B_, C_, h0.transpose(1, 2).contiguous())  # state-major
    # under vmap no tensor reports requires_grad, so inside fixed_paths grad mode alone decides
    needs_grad = any(t.requires_grad for t in inputs) or paths_fixed()
    if torch.is_grad_enabled() and needs_grad and adjoints_allowed():
        y, h = _ChunkedScan.apply(*inputs, Lc)[:2]  # the adjoint below, not autograd through 2 Lc + nc steps
    else:  # no gradients, or fixed paths (compile, higher derivatives), which trace the steps themselves
        y, h, _ = _scan_chunks(*inputs, Lc, in_place=not paths_fixed())
    y = y[:, :L] if D is None else torch.addcmul(y[:, :L], x_[:, :L], D.to(ct))  # y + D ⊙ x, one pass
    return y.to(x.dtype), h.transpose(1, 2)


def _scan_chunks(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, Lc: int, *,
                 in_place: bool, keep: tuple[list[Tensor], list[Tensor]] | None = None
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """The three steps above on inputs whose length is a multiple of Lc (compute dtype, no skip),
    with A (N, Dn), or (B, 1, N, Dn) for one A per sequence (packed members), and h0 (B, N, Dn).

    Returns y (B, L, Dn), the last state (B, N, Dn) and the chunks' start states (B, nc, N, Dn).
    ``in_place``: update the running states in place; False inside ``fixed_paths()``, where autograd,
    vmap or compile record the steps (torch.func transforms run this kernel there, as every kernel).
    ``keep``: two lists that receive every position's decay and state, (B, nc, N, Dn) each, for the
    backward pass; each decay is then computed once for both scans (without ``keep`` the per-step
    tensors stay small and in cache: materialising all L decays at once was slower).
    """
    Bsz, Lp, Dn = x.shape
    nc, N = Lp // Lc, A.shape[-2]
    dts, us, Bs, Cs = _per_position(x, dt, B, C, Lc)
    decays, states = keep if keep is not None else (None, None)

    def step(i: int, h: Tensor, fresh: bool) -> Tensor:
        """Token i of the first k chunks: h <- exp(dt_i A) ⊙ h + u_i B_i^T, h (B, k, N, Dn).
        In place unless ``fresh``; fresh tensors were faster than one whole-call buffer, and in-place
        updates of a reused one faster than fresh ones (new memory is the cost, not the arithmetic)."""
        k = h.shape[1]
        if not in_place:
            return torch.addcmul(Bs[i][:, :k, :, None] * us[i][:, :k, None, :],
                                 torch.exp(dts[i][:, :k, None, :] * A), h)
        if keep is None:
            decay = torch.mul(dts[i][:, :k, None, :], A).exp_()  # (B, k, N, Dn), exponents <= 0
        else:
            if len(decays) == i:
                decays.append(torch.mul(dts[i][..., None, :], A).exp_())
            decay = decays[i][:, :k]
        h = torch.mul(decay, h) if fresh else h.mul_(decay)
        return h.addcmul_(Bs[i][:, :k, :, None], us[i][:, :k, None, :])

    local = x.new_zeros(Bsz, nc - 1, N, Dn)  # 1. end states from zero
    for i in range(Lc if nc > 1 else 0):
        local = step(i, local, fresh=False)
    chunk_decay = torch.exp(dt.view(Bsz, nc, Lc, Dn)[:, :-1].sum(2)[..., None, :] * A)  # 2. (B, nc-1, N, Dn)
    starts = [h0]
    for c in range(nc - 1):
        starts.append(torch.addcmul(local[:, c], chunk_decay[:, c], starts[-1]))
    h = starts = torch.stack(starts, dim=1)  # 3. (B, nc, N, Dn), rescanned from the true starts
    outputs = []
    for i in range(Lc):
        h = step(i, h, fresh=keep is not None or i == 0)  # kept states are fresh, and so is starts
        if keep is not None:
            states.append(h)
        outputs.append((Cs[i][..., None, :] @ h).squeeze(-2))  # (B, nc, Dn): C_i^T h_i
    return torch.stack(outputs, dim=2).reshape(Bsz, Lp, Dn), h[:, -1], starts


def _per_position(x: Tensor, dt: Tensor, B: Tensor, C: Tensor, Lc: int) -> tuple[tuple[Tensor, ...], ...]:
    """Per position in the chunk, contiguous slices of one position-major copy (so every step's
    broadcasts and products read dense memory; one stack in backward, see the recurrent form):
    dt and u = dt x as Lc x (B, nc, Dn), B and C as Lc x (B, nc, N)."""
    return tuple(_position_major(t, Lc).unbind(0) for t in (dt, dt * x, B, C))


def _position_major(t: Tensor, Lc: int) -> Tensor:
    """(B, nc Lc, F) -> (Lc, B, nc, F), contiguous."""
    Bsz, Lp, F_ = t.shape
    return t.reshape(Bsz, Lp // Lc, Lc, F_).permute(2, 0, 1, 3).contiguous()


class _ChunkedScan(torch.autograd.Function):
    """The chunked scan with its adjoint written out. Forward keeps every position's decay and state
    (B, nc, N, Dn) (autograd through the steps kept more); backward runs the adjoint recurrence
    backwards in time,

        dh_t = exp(dt_{t+1} A) ⊙ dh_{t+1} + dy_t C_t^T,  (dh after the last token: the state's gradient)

    in the same two levels as the forward pass: each chunk from a zero end gradient, the chunks'
    incoming gradients chunk by chunk (dh at a chunk's end = exp(A sum dt) of the next chunk ⊙ its
    incoming gradient + its own part), then each chunk from its true incoming gradient, reading out
    (in the (Dn, N) orientation of the module docstring; the code holds the transposes)

        dC_t = h_t^T dy_t,  dB_t = dh_t^T u_t,  du_t = dh_t B_t,
        g_t = dh_t ⊙ h_{t-1} ⊙ exp(dt_t A):  ddt_t += sum_n g_t A,  dA += sum_t g_t dt_t,

    with u = dt x (dx = du dt, ddt += du x). First order only (backward with create_graph raises); for
    higher derivatives, forward-mode AD or compile, run the scan inside ``ops.numerics.fixed_paths()``,
    where autograd records the steps. Under vmap (packed training, which takes first derivatives
    alone: ``fixed_paths(first_order=True)``) the vmap rule below keeps this adjoint."""

    @staticmethod
    def forward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, Lc: int):
        """Returns y, the last state and, for backward, the chunks' start states and every position's
        decay and state (outputs, not ctx attributes, so that the vmap rule below can fold them)."""
        decays, states = [], []
        y, h_last, starts = _scan_chunks(x, dt, A, B, C, h0, Lc, in_place=True, keep=(decays, states))
        return y, h_last.clone(), starts, *decays, *states  # h_last a copy: the caller may update it

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        x, dt, A, B, C, _, Lc = inputs
        ctx.save_for_backward(x, dt, A, B, C, *output[2:])
        ctx.mark_non_differentiable(*output[2:])
        ctx.set_materialize_grads(False)
        ctx.Lc = Lc

    @staticmethod
    def vmap(info, in_dims: tuple, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor,
             Lc: int):
        """Packed members (torch.func.vmap over K models): the member axis joins the batch axis,
        (K, B, ...) -> (K B, ...), and A becomes one (1, N, Dn) per sequence; the sequences of a scan
        are independent, so this is K scans, run as one with this adjoint."""
        K = info.batch_size

        def front(t: Tensor, dim: int | None) -> Tensor:  # the member axis first: (K, ...)
            return t.expand(K, *t.shape) if dim is None else t.movedim(dim, 0)

        x, dt, A, B, C, h0 = (front(t, d) for t, d in zip((x, dt, A, B, C, h0), in_dims))
        Bsz, N, Dn = x.shape[1], *A.shape[-2:]
        A = A.reshape(K, 1, 1, N, Dn).expand(K, Bsz, 1, N, Dn).reshape(K * Bsz, 1, N, Dn)
        outputs = _ChunkedScan.apply(*(t.flatten(0, 1) for t in (x, dt)), A,
                                     *(t.flatten(0, 1) for t in (B, C, h0)), Lc)
        return tuple(o.unflatten(0, (K, Bsz)) for o in outputs), (0,) * len(outputs)

    @staticmethod
    def backward(ctx, dy: Tensor | None, dh_last: Tensor | None, *_):
        if torch.is_grad_enabled():  # create_graph: the saved decays and states would act as constants
            raise RuntimeError("the chunked selective scan's backward is first order: for higher "
                               "derivatives run it inside recallkit.ops.numerics.fixed_paths()")
        x, dt, A, B, C, starts, *kept = ctx.saved_tensors
        Lc, (Bsz, Lp, Dn), N = ctx.Lc, x.shape, A.shape[-2]
        dy = torch.zeros_like(x) if dy is None else dy
        dh_last = torch.zeros_like(starts[:, 0]) if dh_last is None else dh_last
        nc = Lp // Lc
        decays, states = kept[:Lc], kept[Lc:]  # every position's decay and state, (B, nc, N, Dn) each
        dts, us, Bs, Cs = _per_position(x, dt, B, C, Lc)
        dys = _position_major(dy, Lc).unbind(0)  # Lc x (B, nc, Dn)
        dh = x.new_zeros(Bsz, nc - 1, N, Dn)  # 1. each chunk (but the first) from a zero end gradient
        for i in reversed(range(Lc if nc > 1 else 0)):
            dh.addcmul_(Cs[i][:, 1:, :, None], dys[i][:, 1:, None, :]).mul_(decays[i][:, 1:])
        chunk_decay = torch.exp(dt.view(Bsz, nc, Lc, Dn)[:, 1:].sum(2)[..., None, :] * A)  # 2.
        incoming = [dh_last]
        for c in reversed(range(nc - 1)):  # chunk c's end gradient from chunk c + 1's start
            incoming.append(torch.addcmul(dh[:, c], chunk_decay[:, c], incoming[-1]))
        dh = torch.stack(incoming[::-1], dim=1)  # 3. (B, nc, N, Dn), each chunk from its true end
        dus, ddts, dBs, dCs = [None] * Lc, [None] * Lc, [None] * Lc, [None] * Lc
        g_dt = torch.zeros_like(dh)  # sum over positions of g_t dt_t, summed into dA at the end
        g, tmp = torch.empty_like(dh), torch.empty_like(dh)  # reused: fresh products were slower
        for i in reversed(range(Lc)):
            dh.addcmul_(Cs[i][..., :, None], dys[i][..., None, :])  # dh_t: (B, nc, N, Dn)
            dCs[i] = torch.mul(states[i], dys[i][..., None, :], out=tmp).sum(-1)  # (B, nc, N)
            dBs[i] = torch.mul(dh, us[i][..., None, :], out=tmp).sum(-1)  # (B, nc, N)
            dus[i] = (Bs[i][..., None, :] @ dh).squeeze(-2)  # (B, nc, Dn)
            dh.mul_(decays[i])  # dh_{t-1} but for the dy_{t-1} C_{t-1}^T term
            torch.mul(dh, states[i - 1] if i else starts, out=g)  # g_t = dh_t ⊙ exp(dt_t A) ⊙ h_{t-1}
            ddts[i] = torch.mul(g, A, out=tmp).sum(-2)  # (B, nc, Dn)
            g_dt.addcmul_(g, dts[i][..., None, :])
        du, ddt, dB, dC = (torch.stack(t, dim=2).reshape(Bsz, Lp, -1) for t in (dus, ddts, dBs, dCs))
        return du * dt, torch.addcmul(ddt, du, x), g_dt.sum_to_size(A.shape), dB, dC, dh[:, 0], None
