"""The recall-memory frontier (Based, Arora et al. 2024, figure 1 at CPU scale): every mixer family
on one plot of MQAR accuracy against inference-state size.

One task (MQAR, V = 256, T = 64, 8 key-value pairs), width 64, lr 5e-3, at most 1000 steps (early stop
at 0.99), and each family swept along the knob that sets its state: Based's window and feature dim,
Mamba's, Longhorn's and Mamba-3's d_state, log-linear Mamba-2's d_state (per Fenwick level: one level
alive after T = 64 tokens, up to 6 before), the head count of GLA, DeltaNet, Gated DeltaNet, KDA, RWKV-6
and RWKV-7 (more heads = smaller per-head key-value matrices), the sliding-window size, and full
attention (whose state is its whole KV cache) as the reference, with MLA's latent cache and FoX (a KV
cache plus a decay per token and head; at 1 and 4 heads) beside it.
Gated DeltaProduct goes along its Householder steps per token n_h = 1, 2, 3 at one head (more
expressive transitions, the same d_model^2 / H state) and to 4 heads at n_h = 2.
HGRN2 goes along its expand ratio n = 16, 64 (the head size; its state is d_model * n).
GSA goes along its slots per head m = 4, 16, 64 (its state 2 * m * d_model does not depend on the
heads).
Families without a state knob (RetNet, Mamba-2, H3, Hyena, BaseConv, linear attention and its
prefix-aware PLA, trained here without JRT's MLM loss) appear at their defaults.
The production hybrids of ``recallkit.recipes`` (Qwen3-Next's 3 Gated DeltaNet : 1 attention, Kimi
Linear's 3 KDA : 1 MLA, Samba's Mamba + sliding window) train with one period of layers each (4, 4, 2).
Every point trains at seeds 0, 1 and 2, each point's seeds together; the 18 points that
docs/results.md discussed first (HEADLINE) run first (measured on today's kernels: 54 runs, 14 min
wall with 2 process workers on 2 cores, 28 min of runs; the other 129 runs about 2 h on older ones).
Three seeds changed several one-seed readings: Mamba-2 is 0.83 / 0.12 / 0.06, DeltaNet at 8 heads
0.79 / 0.99 / 0.14 (0.19 / 0.98 / 0.14 on older kernels), Gated DeltaProduct at one head 0.97-0.99
at seed 0 but 0.04-0.11 at seeds 1 and 2, and the Qwen3-Next recipe 0.07 / 0.99 / 0.09.
Run: ``recallkit run sweeps/state_tradeoff.py --out runs/state_tradeoff --executor process``.
"""

import recallkit as rk
from recallkit.recipes import based, kimi_linear, qwen3_next, samba

VOCAB_SIZE = 256
D_MODEL = 64
TASK = dict(name="mqar", vocab_size=VOCAB_SIZE, seq_len=64, num_kv_pairs=8)
TRAIN = dict(lr=5e-3, max_steps=1000, seed=0)
CONV = 4  # the same short conv in front of every mixer whose block has none of its own

VARIANTS: list[tuple[str, dict | list[dict]]] = [
    ("attention", {"name": "attention", "position": "rope", "short_conv": CONV}),
    ("mla", {"name": "mla", "kv_latent_dim": 16, "rope_dim": 8, "short_conv": CONV}),
    *[("sliding_window", {"name": "attention", "position": "rope", "window": w, "short_conv": CONV})
      for w in (4, 8, 16, 32)],
    *[("based", based(feature_dim=f, window=w)) for f in (4, 8, 16) for w in (8, 32)],
    *[("mamba", {"name": "mamba", "d_state": n}) for n in (4, 16, 64)],
    *[("longhorn", {"name": "longhorn", "d_state": n}) for n in (4, 16, 64)],
    *[("gla", {"name": "gla", "num_heads": h, "short_conv": CONV}) for h in (1, 2, 4, 8)],
    *[("deltanet", {"name": "deltanet", "num_heads": h, "short_conv": CONV}) for h in (1, 2, 4, 8)],
    *[("gated_deltanet", {"name": "gated_deltanet", "num_heads": h, "short_conv": CONV}) for h in (1, 4)],
    *[("kda", {"name": "kda", "num_heads": h, "short_conv": CONV}) for h in (1, 4)],
    *[("gsa", {"name": "gsa", "num_slots": m, "short_conv": CONV}) for m in (4, 16, 64)],
    *[("gated_deltaproduct", {"name": "gated_deltaproduct", "num_heads": h, "num_householder": n,
                              "short_conv": CONV}) for h, n in ((1, 1), (1, 2), (1, 3), (4, 2))],
    *[("fox", {"name": "fox", "num_heads": h, "short_conv": CONV}) for h in (1, 4)],
    *[("rwkv6", {"name": "rwkv6", "num_heads": h, "short_conv": CONV}) for h in (1, 4)],
    *[("hgrn2", {"name": "hgrn2", "expand_ratio": n, "short_conv": CONV}) for n in (16, 64)],
    *[("rwkv7", {"name": "rwkv7", "num_heads": h, "short_conv": CONV}) for h in (1, 4)],
    ("retnet", {"name": "retnet", "num_heads": 2, "short_conv": CONV}),
    ("mamba2", {"name": "mamba2"}),
    *[("log_linear", {"name": "log_linear", "d_state": n}) for n in (4, 16, 64)],
    *[("mamba3", {"name": "mamba3", "d_state": n, "short_conv": CONV}) for n in (16, 64)],
    ("linear_attention", {"name": "linear_attention", "feature_map": "elu", "feature_dim": 16,
                          "short_conv": CONV}),
    ("pla", {"name": "pla", "feature_map": "elu", "feature_dim": 16, "short_conv": CONV}),
    ("h3", {"name": "h3"}),
    ("hyena", {"name": "hyena"}),
    ("base_conv", {"name": "base_conv", "kernel_size": "long"}),
]

# The production hybrids (recallkit.recipes) at their layer ratios: 4 layers, so each holds one period.
RECIPES: list[tuple[str, list[dict], int]] = [
    ("qwen3_next", qwen3_next(), 4),  # 3 Gated DeltaNet : 1 GQA attention
    ("kimi_linear", kimi_linear(), 4),  # 3 KDA : 1 NoPE MLA
    *[("samba", samba(window=w), 2) for w in (8, 32)],  # Mamba + sliding window
]

# Every point runs at every seed of SEEDS, each point's seeds together (so that a partial run leaves
# whole points); the points behind docs/results.md's claims first, in HEADLINE's order.
SEEDS = [0, 1, 2]
HEADLINE = [
    ("attention", 0), ("mla", 0), ("deltanet", 4), ("deltanet", 8), ("gated_deltanet", 4),
    *(("sliding_window", w) for w in (4, 8, 16, 32)), ("based", (4, 8)), ("based", (16, 32)),
    ("gla", 2), ("gla", 8), ("mamba2", 0), ("retnet", 2), ("mamba", 16), ("base_conv", 0), ("hyena", 0),
]


def _knob(mixer: dict | list[dict]) -> object:
    """The state knob of a VARIANTS entry as HEADLINE names it: Based's (feature dim, window), else the
    window, head count or d_state it sets (0: none)."""
    if isinstance(mixer, list):
        return mixer[0]["feature_dim"], mixer[1]["window"]
    return mixer.get("window") or mixer.get("num_heads") or mixer.get("d_state") or 0


def run(label: str, mixer: dict | list[dict], layers: int, seed: int) -> rk.RunConfig:
    return rk.RunConfig(
        model=dict(vocab_size=VOCAB_SIZE, d_model=D_MODEL, num_layers=layers, mixer=mixer, mlp="none"),
        task=TASK, train={**TRAIN, "seed": seed}, label=label,
    )


_variants = {(label, _knob(mixer)): mixer for label, mixer in VARIANTS}
_headline = [(label, _variants[label, knob]) for label, knob in HEADLINE]
configs = [run(label, mixer, 2, seed) for label, mixer in _headline for seed in SEEDS] + [
    run(label, mixer, layers, seed)
    for label, mixer, layers in [*((label, mixer, 2) for label, mixer in VARIANTS), *RECIPES]
    if (label, mixer) not in _headline
    for seed in SEEDS
]
