"""Which mixers of 2025-2026 beat Gated DeltaNet at equal inference state on MQAR.

One task (MQAR, V = 256, T = 64, 8 key-value pairs: the state_tradeoff sweep's), 2 layers of width
64, no MLP, the same short conv in front of every mixer whose block has none, lr 5e-3, at most 1000
steps (early stop at 0.99); seeds 0, 1 and 2 for every mixer. Every model holds
about 512 numbers of recurrent state per layer (plus conv and token-shift tails, which the report
counts exactly): the matrix-state mixers at 8 heads (d^2 / H = 512), HGRN2 at head size 8
(d n = 512), Gated Slot Attention at 4 slots per head (2 m d = 512), Mamba-3 and Longhorn at 4 states
per inner channel (2 d N = 512). At this size DeltaNet (8 heads) reached 0.640 [0.140, 0.987] in the
state_tradeoff sweep (seeds 0-2: 0.794 / 0.987 / 0.140), so the memory is tight and how a mixer writes
into it shows.

    recallkit run sweeps/equal_state.py --out runs/equal_state --executor process
    recallkit report runs/equal_state
"""

import recallkit as rk

CONV = 4
HEADS = 8  # d^2 / H = 512 numbers per layer at d = 64
SEEDS = [0, 1, 2]
TASK = dict(name="mqar", vocab_size=256, seq_len=64, num_kv_pairs=8)

MIXERS: dict[str, dict] = {
    "gated_deltanet": {"name": "gated_deltanet", "num_heads": HEADS, "short_conv": CONV},
    "deltanet": {"name": "deltanet", "num_heads": HEADS, "short_conv": CONV},
    "kda": {"name": "kda", "num_heads": HEADS, "short_conv": CONV},
    "gated_deltaproduct": {"name": "gated_deltaproduct", "num_heads": HEADS, "num_householder": 2,
                           "short_conv": CONV},
    "rwkv7": {"name": "rwkv7", "num_heads": HEADS, "short_conv": CONV},
    "rwkv6": {"name": "rwkv6", "num_heads": HEADS, "short_conv": CONV},
    "gla": {"name": "gla", "num_heads": HEADS, "expand_k": 1.0, "short_conv": CONV},  # keys as wide as values
    "hgrn2": {"name": "hgrn2", "expand_ratio": 8, "short_conv": CONV},  # d n = 512
    "gsa": {"name": "gsa", "num_slots": 4, "short_conv": CONV},  # 2 m d = 512
    "mamba3": {"name": "mamba3", "d_state": 4, "short_conv": CONV},  # H P N = 2 d N = 512
    "longhorn": {"name": "longhorn", "d_state": 4},  # 2 d N = 512, its own conv as Mamba's
}



def run(label: str, seed: int) -> rk.RunConfig:
    return rk.RunConfig(
        model=dict(vocab_size=256, d_model=64, num_layers=2, mixer=MIXERS[label], mlp="none"),
        task=TASK, train=dict(lr=5e-3, max_steps=1000, seed=seed), label=label,
    )


configs = [run(label, seed) for seed in SEEDS for label in MIXERS]
