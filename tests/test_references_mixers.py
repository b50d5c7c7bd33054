"""Every mixer against a reference written from its paper's equations, with the mixer's own weights.

Each reference reads only the mixer's parameters (weight matrices, biases, filters, SSM parameters)
and types the paper's update out as plain tensor code, one token at a time: no kernel from
``recallkit.ops``, no mixer helper (projections, feature maps, decays, RoPE, filters are all written
here). Fixed constants (RetNet's decays, Hyena's positional features and decay window, RoPE's
frequencies) are recomputed here from the papers' formulas, never read from the mixer's buffers, so a
wrong constant in the implementation fails. Everything runs in float64 so agreement is ~1e-10.
"""

from __future__ import annotations

import importlib

import math

import pytest
import torch

import recallkit as rk
from recallkit.mixers import build_mixer

D = 16
T = 11
F64 = torch.float64
TOL = {"atol": 1e-7, "rtol": 1e-6}
# RoPE angles and Hyena's positional features / decay rates are built in float32 by design (~3e-7)
F32_CONSTANTS = {"atol": 1e-6, "rtol": 1e-4}


def make(key: str, seed: int = 0, **kwargs) -> rk.mixers.Mixer:
    torch.manual_seed(seed)
    return build_mixer(D, rk.MIXERS[key].Config(name=key, **kwargs)).to(F64).eval()


def inputs(batch: int = 2, length: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


def randomize(mixer, scale: float = 0.5, seed: int = 7) -> None:
    """Perturb every parameter, so that init-time zeros and ones (biases, D, norm weights) cannot hide
    a term the implementation drops."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mixer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


# --- plain building blocks, from their definitions ----------------------------------------------

def linear(x: torch.Tensor, layer) -> torch.Tensor:
    """x W^T + b of an nn.Linear's weights."""
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return 1 / (1 + torch.exp(-x))


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(x))


def causal_conv_taps(x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """Depthwise causal conv, token loop: y_t = b + sum_i w[:, i] x_{t - K + 1 + i} (zeros before 0).
    x (B, T, C), weight (C, K)."""
    B, T_, C = x.shape
    K = weight.shape[1]
    y = torch.zeros_like(x)
    for t in range(T_):
        for i in range(K):
            s = t - K + 1 + i
            if s >= 0:
                y[:, t] += weight[:, i] * x[:, s]
        if bias is not None:
            y[:, t] += bias
    return y


def group_norm_per_head(o: torch.Tensor, norm, heads: int) -> torch.Tensor:
    """GroupNorm with one group per head, per token: o (B, T, D) -> normalised over each head's channels."""
    B, T_, D_ = o.shape
    g = o.view(B, T_, heads, D_ // heads)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    return ((g - mean) / torch.sqrt(var + norm.eps)).view(B, T_, D_) * norm.weight + norm.bias


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x**2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, position: int, base: float) -> torch.Tensor:
    """RoPE (Su et al. 2021) of one vector at ``position``: the pair (x_i, x_{i + d/2}) rotated by the
    angle position * base^(-2i/d)."""
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        angle = position * base ** (-2 * i / d)
        c, s = math.cos(angle), math.sin(angle)
        out[..., i] = x[..., i] * c - x[..., i + d // 2] * s
        out[..., i + d // 2] = x[..., i] * s + x[..., i + d // 2] * c
    return out


# --- feature maps (Katharopoulos et al. 2020; Based, arXiv 2402.18668) ----------------------------

def phi(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "identity":
        return x
    if name == "elu":  # elu(x) + 1
        return torch.where(x > 0, x + 1, torch.exp(x))
    if name == "relu":
        return torch.clamp(x, min=0)
    d = x.shape[-1]  # taylor: [1, x / d^(1/4), vec(x x^T) / (sqrt 2 sqrt d)]
    outer = torch.einsum("...i,...j->...ij", x, x).flatten(-2) / (math.sqrt(2) * math.sqrt(d))
    return torch.cat([torch.ones_like(x[..., :1]), x / d**0.25, outer], dim=-1)


def test_taylor_map_gives_the_second_order_expansion_of_exp():
    q, k = torch.randn(2, 5, 16, dtype=F64).unbind(0)
    dot = (q * k).sum(-1)
    expected = 1 + dot / 4 + dot**2 / 32  # 1 + q.k / sqrt d + (q.k)^2 / (2 d), d = 16
    torch.testing.assert_close((phi("taylor", q) * phi("taylor", k)).sum(-1), expected)
    from recallkit.ops.feature_maps import FEATURE_MAPS
    for name in ("identity", "elu", "relu", "taylor"):
        torch.testing.assert_close(FEATURE_MAPS[name](q), phi(name, q))


def linear_attention_reference(mixer, x: torch.Tensor) -> torch.Tensor:
    """y_t = phi(q_t)^T S_t / phi(q_t)^T z_t, S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t)."""
    cfg = mixer.config
    B, T_, _ = x.shape
    H, f = cfg.num_heads, cfg.feature_dim
    qk = linear(x, mixer.qk).view(B, T_, 2, H, f)
    q, k = phi(cfg.feature_map, qk[:, :, 0]), phi(cfg.feature_map, qk[:, :, 1])  # (B, T, H, F)
    v = linear(x, mixer.v).view(B, T_, H, D // H)
    y = torch.zeros_like(v)
    for b in range(B):
        for h in range(H):
            S = torch.zeros(q.shape[-1], D // H, dtype=F64)
            z = torch.zeros(q.shape[-1], dtype=F64)
            for t in range(T_):
                S = S + torch.outer(k[b, t, h], v[b, t, h])
                z = z + k[b, t, h]
                num = q[b, t, h] @ S
                y[b, t, h] = num / (q[b, t, h] @ z + 1e-6) if cfg.normalize else num
    return linear(y.reshape(B, T_, D), mixer.out)


@pytest.mark.parametrize("kwargs", [
    {"feature_map": "taylor", "feature_dim": 4, "num_heads": 2, "chunk_size": 4},
    {"feature_map": "taylor", "feature_dim": 4, "chunk_size": 64},
    {"feature_map": "elu", "feature_dim": 8, "num_heads": 2, "chunk_size": 3},
    {"feature_map": "relu", "feature_dim": 8, "chunk_size": 5},
    {"feature_map": "identity", "normalize": False, "num_heads": 4, "chunk_size": 4},
    {"feature_map": "taylor", "feature_dim": 4, "normalize": False, "chunk_size": 4},
], ids=["taylor-2h", "taylor-1chunk", "elu", "relu", "identity-unnormalised", "taylor-unnormalised"])
def test_linear_attention_is_the_formula(kwargs):
    mixer, x = make("linear_attention", **kwargs), inputs()
    randomize(mixer)
    with torch.no_grad():
        expected = linear_attention_reference(mixer, x)
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_step, state = [], mixer.init_state(2, x.device, F64)
        for t in range(T):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), expected, **TOL)


def test_the_normaliser_matters_here():
    """The two forms differ on these weights, so the normalised reference above can tell them apart."""
    mixer = make("linear_attention", feature_dim=4, chunk_size=4)
    unnormalised = make("linear_attention", feature_dim=4, chunk_size=4, normalize=False)
    unnormalised.load_state_dict(mixer.state_dict())
    x = inputs()
    with torch.no_grad():
        assert (mixer(x) - unnormalised(x)).abs().max() > 1e-2


# --- RetNet (arXiv 2307.08621, eq. 6 and section 2.2) -----------------------------------------------

@pytest.mark.parametrize("heads", [1, 2, 4])
def test_retnet_is_multi_scale_retention_with_gamma_1_minus_2_to_minus_5_minus_h(heads):
    mixer, x = make("retnet", num_heads=heads, chunk_size=4), inputs()
    randomize(mixer, scale=0.2)
    B, T_, _ = x.shape
    dh = D // heads
    with torch.no_grad():
        qkv = (x @ mixer.qkv.weight.T).view(B, T_, 3, heads, dh)
        o = torch.zeros(B, T_, heads, dh, dtype=F64)
        for h in range(heads):
            gamma = 1 - 2.0 ** (-5 - h)
            for b in range(B):
                S = torch.zeros(dh, dh, dtype=F64)
                for t in range(T_):
                    q, k, v = qkv[b, t, 0, h], qkv[b, t, 1, h] / math.sqrt(dh), qkv[b, t, 2, h]
                    S = gamma * S + torch.outer(k, v)
                    o[b, t, h] = q @ S
        y = group_norm_per_head(o.reshape(B, T_, D), mixer.norm, heads)
        expected = (silu(x @ mixer.gate.weight.T) * y) @ mixer.out.weight.T
        torch.testing.assert_close(mixer(x), expected, **TOL)


# --- GLA (arXiv 2312.06635, section 4) ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"chunk_size": 4},
    {"num_heads": 2, "expand_k": 1.0, "gate_rank": 4, "gate_temperature": 2.0, "chunk_size": 5},
    {"num_heads": 1, "gate_temperature": 1.0, "chunk_size": 64},
])
def test_gla_is_the_gated_recurrence_with_the_temperature(kwargs):
    mixer, x = make("gla", **kwargs), inputs()
    randomize(mixer, scale=0.3)
    cfg, B, T_ = mixer.config, *x.shape[:2]
    H = cfg.num_heads
    dk, dv = round(D * cfg.expand_k) // H, D // H
    with torch.no_grad():
        qk = (x @ mixer.qk.weight.T).view(B, T_, 2, H, dk)
        v = (x @ mixer.v.weight.T).view(B, T_, H, dv)
        alpha = sigmoid(linear(x @ mixer.gate_down.weight.T, mixer.gate_up)) ** (1 / cfg.gate_temperature)
        alpha = alpha.view(B, T_, H, dk)
        o = torch.zeros(B, T_, H, dv, dtype=F64)
        for b in range(B):
            for h in range(H):
                S = torch.zeros(dk, dv, dtype=F64)
                for t in range(T_):
                    S = torch.diag(alpha[b, t, h]) @ S + torch.outer(qk[b, t, 1, h], v[b, t, h])
                    o[b, t, h] = (qk[b, t, 0, h] / math.sqrt(dk)) @ S
        y = group_norm_per_head(o.reshape(B, T_, D), mixer.norm, H)
        expected = (silu(linear(x, mixer.out_gate)) * y) @ mixer.out.weight.T
        torch.testing.assert_close(mixer(x), expected, **TOL)


def test_gla_temperature_sets_the_decay_at_init():
    """The bias init puts the per-channel forget rates (1 - alpha ~ -log alpha) in [1/512, 1/16] per
    step whatever the temperature, which only holds if the gate divides by the configured tau."""
    for tau in (1.0, 16.0, 64.0):
        mixer = make("gla", gate_temperature=tau)
        rate = torch.nn.functional.softplus(-mixer.gate_up.bias) / tau  # -log alpha at zero input
        assert rate.min() >= 1 / 512 * (1 - 1e-6) and rate.max() <= 1 / 16 * (1 + 1e-6)


# --- Mamba-1 (arXiv 2312.00752, Algorithm 2 and section 3.6) -------------------------------------------

def mamba_reference(mixer, x: torch.Tensor) -> torch.Tensor:
    cfg = mixer.config
    B, T_, _ = x.shape
    Dn, N, R = cfg.expand * D, cfg.d_state, mixer.dt_rank
    xz = x @ mixer.in_proj.weight.T
    xi, z = xz[..., :Dn], xz[..., Dn:]
    xc = silu(causal_conv_taps(xi, mixer.conv_weight, mixer.conv_bias))
    proj = xc @ mixer.x_proj.weight.T
    dt = softplus(linear(proj[..., :R], mixer.dt_proj))  # (B, T, Dn)
    Bm, Cm = proj[..., R : R + N], proj[..., R + N :]
    A = -torch.exp(mixer.A_log)  # (Dn, N)
    y = torch.zeros(B, T_, Dn, dtype=F64)
    for b in range(B):
        h = torch.zeros(Dn, N, dtype=F64)
        for t in range(T_):
            # ZOH for A, Euler for B: h_t = exp(dt A) h_{t-1} + dt B_t x_t ; y_t = C_t h_t + D x_t
            h = torch.exp(dt[b, t, :, None] * A) * h + dt[b, t, :, None] * Bm[b, t][None] * xc[b, t, :, None]
            y[b, t] = h @ Cm[b, t] + mixer.D * xc[b, t]
    return (y * silu(z)) @ mixer.out_proj.weight.T


@pytest.mark.parametrize("kwargs", [{"chunk_size": 4},
                                    {"d_state": 4, "d_conv": 2, "expand": 1, "dt_rank": 3}])
def test_mamba_is_the_selective_scan(kwargs):
    mixer, x = make("mamba", **kwargs), inputs()
    randomize(mixer, scale=0.2)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), mamba_reference(mixer, x), **TOL)


@pytest.mark.parametrize("key", ["mamba", "mamba2", "gated_deltanet"])
@pytest.mark.parametrize(("dt_min", "dt_max"), [(1e-3, 1e-1), (0.02, 0.05), (0.3, 0.31)])
def test_dt_at_init_is_log_uniform_in_the_configured_range(key, dt_min, dt_max):
    """softplus(dt bias) at init lies in [dt_min, dt_max] and spreads over the range in log space."""
    kwargs = {"expand": 4} if key != "gated_deltanet" else {"num_heads": 16}
    if key == "mamba2":
        kwargs["head_dim"] = 1  # 64 heads, each with its own dt
    torch.manual_seed(0)
    mixer = build_mixer(D, rk.MIXERS[key].Config(name=key, dt_min=dt_min, dt_max=dt_max, **kwargs))
    bias = mixer.dt_proj.bias if key == "mamba" else mixer.dt_bias
    dt = torch.nn.functional.softplus(bias.detach().double())
    assert dt.numel() >= 16
    assert dt.min() >= dt_min * (1 - 1e-4) and dt.max() <= dt_max * (1 + 1e-4)
    log_span = math.log(dt_max) - math.log(dt_min)
    spread = (dt.log().max() - dt.log().min()) / log_span
    assert spread > 0.6, f"log dt covers {spread:.2f} of the range"


def test_mamba_A_is_s4d_real():
    mixer = make("mamba", d_state=6)
    A = -torch.exp(mixer.A_log)
    torch.testing.assert_close(A, -torch.arange(1, 7, dtype=F64).expand_as(A))


# --- Mamba-2 / SSD (arXiv 2405.21060, section 7 and the Mamba-2 block) ----------------------------------

@pytest.mark.parametrize("kwargs", [{"chunk_size": 4},
                                    {"d_state": 4, "head_dim": 8, "expand": 1, "d_conv": 2}])
def test_mamba2_is_ssd(kwargs):
    mixer, x = make("mamba2", **kwargs), inputs()
    randomize(mixer, scale=0.2)
    cfg, B, T_ = mixer.config, *x.shape[:2]
    Dn, N, P = cfg.expand * D, cfg.d_state, cfg.head_dim
    H = Dn // P
    with torch.no_grad():
        proj = x @ mixer.in_proj.weight.T
        z, xbc, dt = proj[..., :Dn], proj[..., Dn : 2 * Dn + 2 * N], proj[..., 2 * Dn + 2 * N :]
        xbc = silu(causal_conv_taps(xbc, mixer.conv_weight, mixer.conv_bias))
        xs, Bm, Cm = xbc[..., :Dn].view(B, T_, H, P), xbc[..., Dn : Dn + N], xbc[..., Dn + N :]
        dt = softplus(dt + mixer.dt_bias)  # (B, T, H)
        A = -torch.exp(mixer.A_log)  # (H,)
        y = torch.zeros(B, T_, H, P, dtype=F64)
        for b in range(B):
            for h in range(H):
                state = torch.zeros(N, P, dtype=F64)
                for t in range(T_):
                    a = torch.exp(dt[b, t, h] * A[h])
                    state = a * state + torch.outer(Bm[b, t], dt[b, t, h] * xs[b, t, h])
                    y[b, t, h] = state.T @ Cm[b, t] + mixer.D[h] * xs[b, t, h]
        y = rms_norm(y.reshape(B, T_, Dn) * silu(z), mixer.norm_weight, 1e-5)
        expected = y @ mixer.out_proj.weight.T
        torch.testing.assert_close(mixer(x), expected, **TOL)


def test_mamba2_A_starts_uniform_in_1_to_16():
    mixer = make("mamba2", head_dim=1, expand=4)  # 64 heads
    A = torch.exp(mixer.A_log)
    assert A.min() >= 1 and A.max() <= 16 and A.max() - A.min() > 10


# --- DeltaNet (arXiv 2406.06484) and Gated DeltaNet (arXiv 2412.06464) ------------------------------------

@pytest.mark.parametrize("key", ["deltanet", "gated_deltanet"])
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_delta_rule_mixers_are_the_formula(key, heads):
    mixer, x = make(key, num_heads=heads, chunk_size=4), inputs()
    randomize(mixer, scale=0.3)
    B, T_, _ = x.shape
    dh = D // heads
    gated = key == "gated_deltanet"
    with torch.no_grad():
        qkv = (x @ mixer.qkv.weight.T).view(B, T_, 3, heads, dh)
        beta = sigmoid(x @ mixer.beta.weight.T)  # (B, T, H)
        if gated:  # alpha_t = exp(-softplus(W_a x + dt_bias) exp(A_log))
            alpha = torch.exp(-softplus(x @ mixer.decay.weight.T + mixer.dt_bias) * torch.exp(mixer.A_log))
        o = torch.zeros(B, T_, heads, dh, dtype=F64)
        eye = torch.eye(dh, dtype=F64)
        for b in range(B):
            for h in range(heads):
                S = torch.zeros(dh, dh, dtype=F64)
                for t in range(T_):
                    q, k, v = (silu(qkv[b, t, i, h]) for i in range(3))
                    q, k, v = q / q.norm(), k / k.norm(), qkv[b, t, 2, h]
                    bt = beta[b, t, h]
                    decay = alpha[b, t, h] if gated else 1.0
                    S = decay * (eye - bt * torch.outer(k, k)) @ S + bt * torch.outer(k, v)
                    o[b, t, h] = S.T @ q
        o = rms_norm(o, mixer.norm.weight, 1e-5).reshape(B, T_, D)  # per head, weight shared
        if gated:
            o = o * silu(x @ mixer.out_gate.weight.T)
        expected = o @ mixer.out.weight.T
        torch.testing.assert_close(mixer(x), expected, **TOL)


# --- KDA, Kimi Delta Attention (arXiv 2510.26692, section 3) ------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"num_heads": 1, "chunk_size": 4},
    {"num_heads": 2, "gate_rank": 3, "chunk_size": 4},
    {"num_heads": 4, "chunk_size": 64},
])
def test_kda_is_the_per_channel_gated_delta_rule(kwargs):
    """S_t = (I - b_t k_t k_t^T) Diag(alpha_t) S_{t-1} + b_t k_t v_t^T, o_t = S_t^T q_t, with
    alpha_t = exp(-exp(A_h) softplus(W_f_up W_f_down x_t + dt_bias)) per key channel,
    y = W_o (sigmoid(W_g_up W_g_down x + b_g) ⊙ RMSNorm_h(o))."""
    mixer, x = make("kda", **kwargs), inputs()
    randomize(mixer, scale=0.3)
    B, T_, _ = x.shape
    heads = kwargs["num_heads"]
    dh = D // heads
    with torch.no_grad():
        qkv = (x @ mixer.qkv.weight.T).view(B, T_, 3, heads, dh)
        beta = sigmoid(x @ mixer.beta.weight.T)  # (B, T, H)
        pre = (x @ mixer.decay_down.weight.T) @ mixer.decay_up.weight.T + mixer.dt_bias  # (B, T, D)
        alpha = torch.exp(-softplus(pre).view(B, T_, heads, dh) * torch.exp(mixer.A_log)[:, None])
        o = torch.zeros(B, T_, heads, dh, dtype=F64)
        eye = torch.eye(dh, dtype=F64)
        for b in range(B):
            for h in range(heads):
                S = torch.zeros(dh, dh, dtype=F64)
                for t in range(T_):
                    q, k = silu(qkv[b, t, 0, h]), silu(qkv[b, t, 1, h])
                    q, k, v = q / q.norm(), k / k.norm(), qkv[b, t, 2, h]
                    bt = beta[b, t, h]
                    decay = torch.diag(alpha[b, t, h])  # Diag(alpha_t), one decay per key channel
                    S = (eye - bt * torch.outer(k, k)) @ decay @ S + bt * torch.outer(k, v)
                    o[b, t, h] = S.T @ q
        o = rms_norm(o, mixer.norm.weight, 1e-5).reshape(B, T_, D)  # per head, weight shared
        gate = sigmoid((x @ mixer.gate_down.weight.T) @ mixer.gate_up.weight.T + mixer.gate_up.bias)
        expected = (o * gate) @ mixer.out.weight.T
        torch.testing.assert_close(mixer(x), expected, **TOL)
        y_step, state = [], mixer.init_state(B, x.device, F64)
        for t in range(T_):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), expected, **TOL)


def test_kda_decay_starts_per_channel_in_the_mamba2_range():
    mixer = make("kda", num_heads=4, dt_min=1e-3, dt_max=0.1)
    dt = softplus(mixer.dt_bias)
    A = torch.exp(mixer.A_log)
    assert mixer.dt_bias.shape == (D,) and mixer.A_log.shape == (4,)  # one dt per channel, one A per head
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 0.1 * (1 + 1e-6)
    assert A.min() >= 1 and A.max() <= 16


# --- H3 (arXiv 2212.14052, Algorithm 1, multi-head) -------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"chunk_size": 4},
    {"num_heads": 2, "d_state": 4, "shift_len": 2, "chunk_size": 5, "input_scale": "zoh"},
    {"num_heads": 8, "d_state": 3, "chunk_size": 64},
])
def test_h3_is_shift_ssm_then_diagonal_ssm_over_kv(kwargs):
    mixer, x = make("h3", **kwargs), inputs()
    randomize(mixer, scale=0.2)
    cfg, B, T_ = mixer.config, *x.shape[:2]
    H, N = cfg.num_heads, cfg.d_state
    dh = D // H
    with torch.no_grad():
        qkv = linear(x, mixer.qkv)
        q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
        k = causal_conv_taps(k, mixer.shift_weight, None)  # the shift SSM's kernel: its taps
        q, k, v = (t.view(B, T_, H, dh) for t in (q, k, v))
        A, dt = -torch.exp(mixer.log_neg_a), torch.exp(mixer.log_dt)  # (H, N), (H,)
        Bbar = mixer.B * (torch.exp(dt[:, None] * A) - 1) / A if cfg.input_scale == "zoh" else mixer.B
        y = torch.zeros(B, T_, H, dh, dtype=F64)
        for b in range(B):
            for h in range(H):
                S = torch.zeros(N, dh, dh, dtype=F64)
                for t in range(T_):
                    kv = torch.outer(k[b, t, h], v[b, t, h])
                    for n in range(N):
                        S[n] = torch.exp(dt[h] * A[h, n]) * S[n] + Bbar[h, n] * kv
                    M = sum(mixer.C[h, n] * S[n] for n in range(N)) + mixer.D[h] * kv
                    y[b, t, h] = q[b, t, h] @ M
        expected = linear(y.reshape(B, T_, D), mixer.out)
        torch.testing.assert_close(mixer(x), expected, **TOL)


# --- BaseConv (Zoology, arXiv 2312.04927) -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"kernel_size": 3}, {"kernel_size": "long", "max_len": 32},
                                    {"kernel_size": "long", "max_len": 16, "out_proj": True}])
def test_base_conv_is_projection_times_convolution(kwargs):
    mixer, x = make("base_conv", **kwargs), inputs()
    randomize(mixer, scale=0.3)
    B, T_, _ = x.shape
    with torch.no_grad():
        conv = torch.zeros_like(x)
        h = mixer.filter
        for t in range(T_):
            conv[:, t] = mixer.conv_bias
            if mixer.config.kernel_size == "long":  # y_t = sum_{s<=t} h[t - s] x_s
                for s in range(t + 1):
                    conv[:, t] += h[:, t - s] * x[:, s]
            else:  # short taps, the last tap on the current token
                K = h.shape[1]
                for i in range(K):
                    if t - K + 1 + i >= 0:
                        conv[:, t] += h[:, i] * x[:, t - K + 1 + i]
        expected = linear(x, mixer.proj) * conv
        if mixer.config.out_proj:
            expected = linear(expected, mixer.out)
        torch.testing.assert_close(mixer(x), expected, **TOL)


# --- Hyena (arXiv 2302.10866, section 3) -------------------------------------------------------------------

def hyena_filters(mixer, length: int) -> torch.Tensor:
    """h[c, l] = FFN(PositionalEncoding(l))[c] * Window(l), written from the paper and the docstring:
    positional features [l / max_len, sin(w_k l), cos(w_k l)] with periods 2 pi / w_k log-spaced over
    2 .. max_len, an MLP with sine activations, and the decay window exp(-alpha_c l) with alpha_c
    log-spaced over 1/16 .. 1/512."""
    cfg, f = mixer.config, mixer.filter
    bands = (cfg.filter_emb_dim - 1) // 2
    periods = [math.exp(math.log(2) + i * (math.log(cfg.max_len) - math.log(2)) / max(bands - 1, 1))
               for i in range(bands)]
    channels = cfg.order * D
    alphas = [math.exp(math.log(1 / 16) + c * (math.log(1 / 512) - math.log(1 / 16)) / (channels - 1))
              for c in range(channels)]
    h = torch.zeros(channels, length, dtype=F64)
    lin1, sin1, lin2, sin2, lin3 = f.mlp
    for lag in range(length):
        pos = torch.tensor([lag / cfg.max_len] + [math.sin(2 * math.pi / p * lag) for p in periods]
                           + [math.cos(2 * math.pi / p * lag) for p in periods], dtype=F64)
        hidden = torch.sin(sin1.freq * linear(pos, lin1))
        hidden = torch.sin(sin2.freq * linear(hidden, lin2))
        h[:, lag] = (hidden @ lin3.weight.T) * torch.tensor([math.exp(-a * lag) for a in alphas], dtype=F64)
    return h


@pytest.mark.parametrize("kwargs", [{"filter_dim": 8}, {"order": 3, "filter_dim": 8, "filter_emb_dim": 5,
                                                         "max_len": 64}, {"order": 1, "filter_dim": 4}])
def test_hyena_is_the_gating_chain_over_implicit_filters(kwargs):
    mixer, x = make("hyena", **kwargs), inputs()
    randomize(mixer, scale=0.2)
    cfg, T_ = mixer.config, x.shape[1]
    N = cfg.order
    with torch.no_grad():
        u = causal_conv_taps(linear(x, mixer.in_proj), mixer.short_weight, mixer.short_bias)
        v, gates = u[..., :D], [u[..., (n + 1) * D : (n + 2) * D] for n in range(N)]
        filters = hyena_filters(mixer, T_)
        z = v  # z_1 = v, z_{n+1} = x_n ⊙ (h_n * z_n + b_n ⊙ z_n)
        for n in range(N):
            h, b_n = filters[n * D : (n + 1) * D], mixer.filter.skip[n * D : (n + 1) * D]
            conv = torch.zeros_like(z)
            for t in range(T_):
                for s in range(t + 1):
                    conv[:, t] += h[:, t - s] * z[:, s]
            z = gates[n] * (conv + b_n * z)
        expected = linear(z, mixer.out)
        torch.testing.assert_close(mixer(x), expected, **F32_CONSTANTS)


# --- MLA (DeepSeek-V2, arXiv 2405.04434, section 2.1) -------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"num_heads": 2, "kv_latent_dim": 6, "rope_dim": 4, "q_latent_dim": 8,
                                         "rope_base": 100.0}, {"num_heads": 2, "rope_dim": 0}])
def test_mla_is_attention_over_the_latent_cache(kwargs):
    mixer, x = make("mla", **kwargs), inputs()
    randomize(mixer, scale=0.3)
    cfg, B, T_ = mixer.config, *x.shape[:2]
    H, d_c, d_r = cfg.num_heads, cfg.kv_latent_dim, cfg.rope_dim
    dh = D // H
    with torch.no_grad():
        down = linear(x, mixer.kv_down)
        latent = down[..., :d_c]  # c_t = W_DKV x_t: what the cache holds
        k_rope = torch.stack([rope(down[:, t, d_c:], t, cfg.rope_base) for t in range(T_)], dim=1)
        kv = linear(latent, mixer.kv_up).view(B, T_, 2, H, dh)
        cq = linear(x, mixer.q_down) if cfg.q_latent_dim else x
        q = linear(cq, mixer.q_up).view(B, T_, H, dh + d_r)
        y = torch.zeros(B, T_, H, dh, dtype=F64)
        for b in range(B):
            for h in range(H):
                for t in range(T_):
                    q_t = torch.cat([q[b, t, h, :dh], rope(q[b, t, h, dh:], t, cfg.rope_base)])
                    scores = torch.stack([
                        q_t @ torch.cat([kv[b, s, 0, h], k_rope[b, s]]) for s in range(t + 1)
                    ]) / math.sqrt(dh + d_r)
                    weights = torch.exp(scores - scores.max())
                    weights = weights / weights.sum()
                    y[b, t, h] = sum(weights[s] * kv[b, s, 1, h] for s in range(t + 1))
        expected = linear(y.reshape(B, T_, D), mixer.out)
        y_prefill, state = mixer.prefill(x)
        torch.testing.assert_close(y_prefill, expected, **F32_CONSTANTS)
        torch.testing.assert_close(state.latent, latent, **TOL)  # the cache is the latent, not K and V
        torch.testing.assert_close(state.rope_key, k_rope, **F32_CONSTANTS)
        # decoding one more token reads only the cache
        x_next = torch.randn(B, D, dtype=F64, generator=torch.Generator().manual_seed(3))
        y_next, _ = mixer.step(x_next, state)
        full = mixer(torch.cat([x, x_next[:, None]], dim=1))[:, -1]
        torch.testing.assert_close(y_next, full, **TOL)


# --- softmax attention (Vaswani et al. 2017; GQA, ALiBi, Hard-ALiBi, RoPE, sliding windows) -----------------

@pytest.mark.parametrize("kwargs", [
    {"num_heads": 2},
    {"num_heads": 4, "num_kv_heads": 2, "position": "rope", "rope_base": 100.0},
    {"num_heads": 4, "num_kv_heads": 1, "window": 4},
    {"num_heads": 4, "position": "alibi"},
    {"num_heads": 4, "position": "hard_alibi"},
], ids=["mha", "gqa-rope", "mqa-window", "alibi", "hard_alibi"])
def test_attention_is_softmax_over_the_visible_keys(kwargs):
    mixer, x = make("attention", **kwargs), inputs()
    randomize(mixer, scale=0.3)
    cfg, B, T_ = mixer.config, *x.shape[:2]
    H, Hkv = cfg.num_heads, cfg.kv_heads
    dh = D // H
    with torch.no_grad():
        qkv = linear(x, mixer.qkv).view(B, T_, H + 2 * Hkv, dh)
        y = torch.zeros(B, T_, H, dh, dtype=F64)
        for b in range(B):
            for h in range(H):
                g = h // (H // Hkv)  # the shared KV head of query head h
                for t in range(T_):
                    q = qkv[b, t, h]
                    visible = [s for s in range(t + 1) if cfg.window is None or t - s < cfg.window]
                    if cfg.position == "hard_alibi" and h < H // 2:
                        visible = [s for s in visible if t - s <= h]  # head h sees its last h + 1 tokens
                    scores = []
                    for s in visible:
                        k = qkv[b, s, H + g]
                        if cfg.position == "rope":
                            score = rope(q, t, cfg.rope_base) @ rope(k, s, cfg.rope_base) / math.sqrt(dh)
                        else:
                            score = q @ k / math.sqrt(dh)
                        if cfg.position == "alibi":
                            score = score - 2.0 ** (-8 * (h + 1) / H) * (t - s)
                        scores.append(score)
                    w = torch.softmax(torch.stack(scores), dim=0)
                    y[b, t, h] = sum(w[i] * qkv[b, s, H + Hkv + g] for i, s in enumerate(visible))
        expected = linear(y.reshape(B, T_, D), mixer.out)
        torch.testing.assert_close(mixer(x), expected, **F32_CONSTANTS if cfg.position == "rope" else TOL)


# --- the short-conv wrapper (Zoology / Based) ---------------------------------------------------------------

@pytest.mark.parametrize("key", ["linear_attention", "deltanet", "attention"])
def test_short_conv_feeds_the_convolved_input_to_the_mixer(key):
    mixer, x = make(key, short_conv=3), inputs()
    randomize(mixer, scale=0.3)
    with torch.no_grad():
        convolved = causal_conv_taps(x, mixer.conv_weight, mixer.conv_bias)
        torch.testing.assert_close(mixer(x), mixer.inner(convolved), **TOL)
        y_step, state = [], mixer.init_state(2, x.device, F64)
        for t in range(T):
            y_t, state = mixer.step(x[:, t], state)
            y_step.append(y_t)
        torch.testing.assert_close(torch.stack(y_step, 1), mixer.inner(convolved), **TOL)


REFERENCE_TESTS = {  # per registry key, the test that holds the mixer to its paper's equations
    **{key: ("tests.test_references_mixers", test) for key, test in {
        "linear_attention": "test_linear_attention_is_the_formula",
        "retnet": "test_retnet_is_multi_scale_retention_with_gamma_1_minus_2_to_minus_5_minus_h",
        "gla": "test_gla_is_the_gated_recurrence_with_the_temperature",
        "mamba": "test_mamba_is_the_selective_scan", "mamba2": "test_mamba2_is_ssd",
        "deltanet": "test_delta_rule_mixers_are_the_formula",
        "gated_deltanet": "test_delta_rule_mixers_are_the_formula",
        "kda": "test_kda_is_the_per_channel_gated_delta_rule",
        "h3": "test_h3_is_shift_ssm_then_diagonal_ssm_over_kv",
        "base_conv": "test_base_conv_is_projection_times_convolution",
        "hyena": "test_hyena_is_the_gating_chain_over_implicit_filters",
        "mla": "test_mla_is_attention_over_the_latent_cache",
        "attention": "test_attention_is_softmax_over_the_visible_keys"}.items()},
    "pla": ("tests.test_pla", "test_chunked_matches_the_formula_in_float64"),  # the JRT formula
    "gsa": ("tests.test_references_gsa", "test_gsa_is_the_gated_slot_recurrence"),
    "rwkv6": ("tests.test_references_rwkv6", "test_rwkv6_is_the_finch_time_mixing"),
    "hgrn2": ("tests.test_references_hgrn2", "test_hgrn2_is_the_paper_recurrence"),
    "rwkv7": ("tests.test_references_rwkv7", "test_rwkv7_is_the_papers_generalised_delta_rule"),
    "gated_deltaproduct": ("tests.test_references_gated_deltaproduct",
                           "test_gated_deltaproduct_is_the_householder_product_recurrence"),
    "fox": ("tests.test_references_fox", "test_fox_is_softmax_attention_with_the_forget_gate_bias"),
    "longhorn": ("tests.test_references_longhorn",
                 "test_longhorn_is_the_online_learning_update_in_mambas_block"),
    "mamba3": ("tests.test_references_mamba3", "test_mamba3_is_the_trapezoidal_complex_ssm"),
    "log_linear": ("tests.test_references_log_linear", "test_log_linear_is_mamba2_over_the_fenwick_buckets"),
}


def test_every_registered_mixer_has_a_reference_here():
    """Each key names its reference test, which must exist (a name in a set passed with no test)."""
    assert set(rk.MIXERS) == set(REFERENCE_TESTS)
    for module, test in REFERENCE_TESTS.values():
        assert callable(getattr(importlib.import_module(module), test)), f"{module}.{test}"
