"""Where log-linear attention lands between a constant state and attention's cache as T grows.

Log-linear Mamba-2 (Guo et al. 2025, arXiv 2506.04761) keeps one Mamba-2 state per Fenwick level
that exists after T tokens, floor(log2 T) + 1 of them, so its state grows as log T, between Mamba-2's
constant state and attention's KV cache, which grows as T. Each model trains on MQAR at its own length
T = 64, 128, 256 with T / 8 key-value pairs (the state_tradeoff task at T = 64), V = 256, 2 layers of
width 64, no MLP, lr 5e-3, at most 1000 steps (early stop at 0.99), seeds 0, 1 and 2: Mamba-2, its
log-linear version at the same d_state (16), and attention with RoPE. The report puts the nine
points of each seed on one accuracy vs state plot. Measured: 27 runs, 49 min wall with 2 process
workers on 2 cores (89 min of runs; the cores shared with a test run for 18 of them); a log-linear
run at T = 256 takes about 12 min, so the last one runs alone.

    recallkit run sweeps/log_linear_length.py --out runs/log_linear_length --executor process
    recallkit report runs/log_linear_length
"""

import recallkit as rk

LENGTHS = [64, 128, 256]
SEEDS = [0, 1, 2]
MIXERS: dict[str, dict] = {
    "mamba2": {"name": "mamba2", "d_state": 16},
    "log_linear": {"name": "log_linear", "d_state": 16},
    "attention": {"name": "attention", "position": "rope", "short_conv": 4},
}


def run(label: str, seq_len: int, seed: int) -> rk.RunConfig:
    return rk.RunConfig(
        model=dict(vocab_size=256, d_model=64, num_layers=2, mixer=MIXERS[label], mlp="none",
                   max_position=0),
        task=dict(name="mqar", vocab_size=256, seq_len=seq_len, num_kv_pairs=seq_len // 8),
        train=dict(lr=5e-3, max_steps=1000, seed=seed), label=label,
    )


configs = [run(label, T, seed) for seed in SEEDS for T in LENGTHS for label in MIXERS]
