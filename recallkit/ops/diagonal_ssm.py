"""Diagonal state-space models: S4D-style per-channel SSMs and H3's SSM over per-head outer products.

Diagonal SSM (S4D-style), per channel c with N diagonal modes A_n (real or complex, Re A_n <= 0):
x_t = exp(dt A) x_{t-1} + B u_t,  y_t = Re(C^T x_t), so y = K * u with the kernel
K[l] = Re(sum_n C_n exp(l dt A_n) B_n). ``B`` is the already discretised input matrix (e.g. ZOH
B (exp(dt A) - 1) / A, the caller's choice). Inputs are (..., C, T). Three forms:

- :func:`diagonal_ssm_recurrent`: the token loop, the spec (also the decode step, T = 1);
- :func:`diagonal_ssm_conv`: materialised kernel + FFT long conv, resumable from a state;
- :func:`diagonal_ssm_kernel`: the kernel alone.

H3's memory, the same diagonal SSM over per-head outer products k_t v_t^T read out by q_t, in the
(B, H, T, d) layout, has its own pair: :func:`h3_ssm_recurrent` (the spec) and :func:`h3_ssm_chunked`
(Toeplitz-masked linear attention inside chunks, N-mode state across them; chunk_size >= T is the
quadratic form).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.ops.long_conv import fft_causal_conv
from recallkit.ops.numerics import compute_dtype


def _powers(A: Tensor, dt: Tensor, length: int) -> Tensor:
    """exp(l dt A_n) for l = 0 .. length - 1: (C, N, length). Re(dt A) <= 0 and l >= 0, so the
    exponent never has a positive real part."""
    steps = torch.arange(length, device=A.device, dtype=dt.dtype)
    return torch.exp((dt[:, None] * A)[..., None] * steps)


def diagonal_ssm_kernel(A: Tensor, B: Tensor, C: Tensor, dt: Tensor, length: int) -> Tensor:
    """Materialise K[c, l] = Re(sum_n C_n exp(l dt_c A_n) B_n), l < length.

    Args:
        A: (C, N) diagonal of the continuous state matrix, real or complex, Re(A) <= 0.
        B, C: (C, N) discretised input and output vectors (real or complex).
        dt: (C,) positive step sizes.
    Returns:
        K (C, length), real (float32, or float64 for float64 inputs).
    """
    kernel = torch.einsum("cn,cnl->cl", C * B, _powers(A, dt, length))
    return (kernel.real if kernel.is_complex() else kernel).to(compute_dtype(A, B, C, dt).to_real())


def diagonal_ssm_recurrent(
    u: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, *, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token loop (the spec): x_t = exp(dt A) x_{t-1} + B u_t, y_t = Re(C^T x_t).

    Args:
        u: (..., C, T) inputs.
        A, B, C: (C, N); dt: (C,) (see :func:`diagonal_ssm_kernel`).
        state: (..., C, N) from a previous call (complex if A, B or C is), or None for zeros.
    Returns:
        y (..., C, T) in u's dtype and the state after the last token.
    """
    dtype = compute_dtype(u, A, B, C)  # complex if any of them is
    decay = torch.exp(dt[:, None] * A).to(dtype)  # (C, N)
    x = u.new_zeros(*u.shape[:-1], A.shape[-1], dtype=dtype) if state is None else state.to(dtype)
    outputs = []
    for t in range(u.shape[-1]):
        x = decay * x + B * u[..., t, None]  # (..., C, N)
        y = (C * x).sum(-1)
        outputs.append(y.real if y.is_complex() else y)
    y = torch.stack(outputs, dim=-1).to(u.dtype) if outputs else u
    return y, x


def diagonal_ssm_conv(
    u: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, *, state: Tensor | None = None,
    return_state: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Parallel form: y = K * u by FFT, plus the decayed read-out of an incoming state.

    With x_0 the incoming state and positions t = 0 .. T - 1 of this block:
    y_t = (K * u)_t + Re(sum_n C_n exp((t + 1) dt A_n) x_0,n) and
    x_T = exp(T dt A) x_0 + sum_s exp((T - 1 - s) dt A) B u_s.

    Args and returns as :func:`diagonal_ssm_recurrent`; ``return_state=False`` skips the final
    state (training) and returns None in its place.
    """
    T = u.shape[-1]
    dtype = compute_dtype(u, A, B, C)
    powers = _powers(A, dt, T + 1).to(dtype)  # (C, N, T + 1)
    kernel = torch.einsum("cn,cnl->cl", C * B, powers[..., :T])
    y = fft_causal_conv(u, kernel.real if kernel.is_complex() else kernel)
    if state is not None:
        read = torch.einsum("...cn,cnl->...cl", state.to(dtype), C[..., None] * powers[..., 1:])
        y = y + (read.real if read.is_complex() else read).to(y.dtype)
    if not return_state:
        return y, None
    # x_T: input s decays for T - 1 - s steps
    final = B * torch.einsum("...cl,cnl->...cn", u.to(dtype), powers[..., :T].flip(-1))
    if state is not None:
        final = final + powers[..., T] * state.to(dtype)
    return y, final


# --- H3's diagonal SSM over per-head outer products, (B, H, T, d) layout -----------------------
#
# One diagonal SSM per head (modes n = 1..N, real A_n < 0, shared by the d_k x d_v entries):
#   S_t[n] = a_n S_{t-1}[n] + B_n k_t v_t^T,  a_n = exp(dt A_n),   S: (B, H, N, d_k, d_v)
#   y_t = q_t^T (sum_n C_n S_t[n] + D k_t v_t^T)
# Unrolled, y_t = sum_{s<=t} K[t - s] (q_t . k_s) v_s with K = diagonal_ssm_kernel + D at lag 0:
# a linear attention whose causal mask is the Toeplitz matrix of the SSM kernel.


def h3_ssm_recurrent(
    q: Tensor, k: Tensor, v: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor, *,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token loop (the spec).

    Args:
        q, k: (B, H, T, d_k); v: (B, H, T, d_v).
        A, B, C: (H, N) real SSM parameters (A < 0, B discretised); dt, D: (H,).
        state: (B, H, N, d_k, d_v) or None for zeros.
    Returns:
        y (B, H, T, d_v) in v's dtype and the state after the last token, in at least float32.
    """
    Bsz, H, T, dk = k.shape
    ct = compute_dtype(q, v)
    q, k, v_ = q.to(ct), k.to(ct), v.to(ct)
    decay = torch.exp(dt[:, None] * A)[..., None, None]  # (H, N, 1, 1)
    S = q.new_zeros(Bsz, H, A.shape[-1], dk, v.shape[-1]) if state is None else state.to(ct)
    outputs = []
    for t in range(T):
        kv = k[:, :, t, :, None] * v_[:, :, t, None, :]  # (B, H, d_k, d_v)
        S = decay * S + B[..., None, None] * kv[:, :, None]
        M = (C[..., None, None] * S).sum(2) + D[:, None, None] * kv  # (B, H, d_k, d_v)
        outputs.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], M))
    return torch.stack(outputs, dim=2).to(v.dtype) if outputs else v, S


def _toeplitz(kernel: Tensor, length: int) -> Tensor:
    """(H, L) kernel -> (H, length, length) lower-triangular Toeplitz matrix, M[t, s] = K[t - s]."""
    lags = torch.arange(length, device=kernel.device)
    diff = lags[:, None] - lags[None, :]
    return kernel[:, diff.clamp(min=0)] * (diff >= 0)  # mask the upper triangle (no exp involved)


def h3_ssm_chunked(
    q: Tensor, k: Tensor, v: Tensor, A: Tensor, B: Tensor, C: Tensor, dt: Tensor, D: Tensor, *,
    state: Tensor | None = None, chunk_size: int = 64, return_state: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Chunkwise-parallel form: Toeplitz-masked attention inside a chunk, the N-mode state across.

    Same arguments and returns as :func:`h3_ssm_recurrent`; ``return_state=False`` skips the
    last chunk's state update (training) and returns None in place of the state.
    """
    Bsz, H, T, dk = k.shape
    N, out_dtype, ct = A.shape[-1], v.dtype, compute_dtype(q, v)
    q, k, v = q.to(ct), k.to(ct), v.to(ct)  # no-ops in float32 and float64
    S = None if state is None else state.to(ct)
    c = min(chunk_size, T) if T else 1
    log_decay = dt[:, None] * A  # (H, N), <= 0
    powers = torch.exp(log_decay[..., None] * torch.arange(c + 1, device=q.device, dtype=log_decay.dtype))
    kernel = torch.einsum("hn,hnl->hl", C * B, powers[..., :c])  # (H, c)
    kernel = torch.cat([kernel[:, :1] + D[:, None], kernel[:, 1:]], dim=1)  # the D skip at lag 0
    mask = _toeplitz(kernel, c).to(q.dtype)  # (H, c, c)
    outputs = []
    for start in range(0, T, c):
        qc, kc, vc = (t[:, :, start : start + c] for t in (q, k, v))
        L = qc.shape[2]
        scores = (qc @ kc.transpose(-1, -2)) * mask[:, :L, :L]  # (B, H, L, L)
        y = scores @ vc
        # the N modes stacked along the feature axis make both state terms single GEMMs
        if S is not None:  # read the incoming state: q_i^T sum_n C_n a_n^(i+1) S[n]
            read = (C[..., None] * powers[..., 1 : L + 1]).transpose(0, 1).to(q.dtype)  # (N, H, L)
            q_modes = qc[:, None] * read[None, ..., None]  # (B, N, H, L, d_k)
            y = y + q_modes.permute(0, 2, 3, 1, 4).reshape(Bsz, H, L, N * dk) @ S.flatten(2, 3)
        if return_state or start + c < T:
            # S[n] <- a_n^L S[n] + sum_j B_n a_n^(L-1-j) k_j v_j^T
            write = (B[..., None] * powers[..., :L].flip(-1)).transpose(0, 1).to(q.dtype)  # (N, H, L)
            k_modes = (kc[:, None] * write[None, ..., None]).permute(0, 2, 3, 1, 4)  # (B, H, L, N, d_k)
            update = (k_modes.reshape(Bsz, H, L, N * dk).transpose(-1, -2) @ vc).view(Bsz, H, N, dk, -1)
            S = update if S is None else powers[..., L, None, None].to(q.dtype) * S + update
        outputs.append(y)
    y = (torch.cat(outputs, dim=2) if outputs else v).to(out_dtype)
    if not return_state:
        return y, None
    return y, q.new_zeros(Bsz, H, N, dk, v.shape[-1]) if S is None else S
