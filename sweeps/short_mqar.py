"""The mixers of 2025-2026 learning the zoo's short MQAR, at seeds 0, 1 and 2.

The README's learning table (the slow learning tests' setting): MQAR with V = 128, T = 32 and 4
key-value pairs, 2 layers of width 64, no MLP, the same short conv in front of every mixer whose
block has none, AdamW lr 5e-3, batch 32, at most 1000 steps, evaluated every 50 and stopped at 0.99.
Answering one of the 4 values in context (the recency solution) scores 0.25. The mixers that stay on
that plateau at T = 32 run again where they are measured to leave it: T = 16 with V = 64 (V = 32 for
Mamba and Longhorn), at most 3000 steps. The variants the README names run too (FoX Pro, Mamba-3's
own block without the conv, HGRN2 with one head, GSA with one wide head).

    recallkit run sweeps/short_mqar.py --out runs/short_mqar --executor process
    recallkit report runs/short_mqar
"""

import recallkit as rk

CONV = 4
SEEDS = [0, 1, 2]
TASK = dict(name="mqar", vocab_size=128, seq_len=32, num_kv_pairs=4)
SHORT = dict(name="mqar", vocab_size=64, seq_len=16, num_kv_pairs=4)  # where the plateau mixers learn

# label: (mixer, task, max_steps)
CASES: dict[str, tuple[dict, dict, int]] = {
    "fox": ({"name": "fox", "short_conv": CONV}, TASK, 1000),
    "fox (pro)": ({"name": "fox", "pro": True, "short_conv": CONV}, TASK, 1000),
    "gated_deltaproduct": ({"name": "gated_deltaproduct", "short_conv": CONV}, TASK, 1000),
    "rwkv7": ({"name": "rwkv7", "short_conv": CONV}, TASK, 1000),
    "kda": ({"name": "kda", "short_conv": CONV}, TASK, 1000),
    "rwkv6": ({"name": "rwkv6", "short_conv": CONV}, TASK, 1000),
    "mamba3": ({"name": "mamba3", "short_conv": CONV}, TASK, 1000),
    "mamba3 (no conv)": ({"name": "mamba3"}, TASK, 1000),
    "log_linear": ({"name": "log_linear", "short_conv": CONV}, TASK, 1000),
    "longhorn": ({"name": "longhorn"}, TASK, 1000),
    "hgrn2": ({"name": "hgrn2", "short_conv": CONV}, TASK, 1000),  # head size 16
    "hgrn2 (head size 64)": ({"name": "hgrn2", "expand_ratio": 64, "short_conv": CONV}, TASK, 1000),
    "gsa": ({"name": "gsa", "short_conv": CONV}, TASK, 1000),  # 4 heads of 16, 64 slots
    "gsa (1 head, 16 slots)": ({"name": "gsa", "num_heads": 1, "num_slots": 16, "short_conv": CONV},
                               TASK, 1500),
    "log_linear (T=16)": ({"name": "log_linear"}, SHORT, 3000),
    "mamba2 (T=16)": ({"name": "mamba2"}, SHORT, 3000),
    "longhorn (T=16)": ({"name": "longhorn"}, SHORT, 3000),
    "longhorn (T=16, V=32)": ({"name": "longhorn"}, {**SHORT, "vocab_size": 32}, 3000),
    "mamba (T=16, V=32)": ({"name": "mamba"}, {**SHORT, "vocab_size": 32}, 3000),
}


def run(label: str, seed: int) -> rk.RunConfig:
    mixer, task, max_steps = CASES[label]
    return rk.RunConfig(
        model=dict(vocab_size=task["vocab_size"], d_model=64, num_layers=2, mixer=mixer, mlp="none"),
        task=task, label=label,
        train=dict(lr=5e-3, max_steps=max_steps, batch_size=32, eval_every=50, seed=seed,
                   early_stop_accuracy=0.99),
    )


# the longest budgets first, so two workers finish together
configs = sorted((run(label, seed) for seed in SEEDS for label in CASES), key=lambda c: -c.train.max_steps)
