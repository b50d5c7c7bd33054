"""KV-cache eviction against recurrent state (H2O, StreamingLLM, TOVA, SnapKV, Scissorhands at CPU scale).

One attention model (RoPE + short conv, d = 64, 2 layers) is trained on MQAR (V = 256, T = 64,
8 key-value pairs: a 16-token context, then the queries) and evaluated under every eviction
policy at budgets from 1/16 to all of the context, in both modes: ``prefill`` (compress once
after the context, then keep the query tokens) and ``continuous`` (never hold more than the
budget). Each evaluation is a row with the state its budget holds, so the report puts the
policies on the frontier next to recurrent models trained on the same task (their usual
state knobs, as in sweeps/state_tradeoff.py).

Expected (literature): ``window`` collapses once keys leave the window; ``sinks`` keep the start,
not the middle facts; attention-score policies (h2o, tova, snapkv) keep more recall per token but
no more facts than fit: with b context tokens kept, about b / 2 of the 8 pairs survive (b pairs at
most here: the short conv lets one cached token carry its key and its value). Continuous mode is
harder than prefill mode on MQAR because the 48-token query region pushes the context out.
snapkv's default 8-token observation window leaves it no prefix slot at budgets of 1-8 tokens, where
it keeps what ``window`` keeps.
Seeds 0, 1 and 2 (the report gives each point's mean and interval). Measured: 11 minutes per seed on
2 cores shared with other work; the numbers are in the README.
Run: ``recallkit run sweeps/kv_eviction.py --out runs/kv_eviction --executor process``.
"""

import recallkit as rk
from recallkit.recipes import based

VOCAB_SIZE = 256
TASK = dict(name="mqar", vocab_size=VOCAB_SIZE, seq_len=64, num_kv_pairs=8)
SEEDS = [0, 1, 2]
BUDGETS = [1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0]  # of the 16-token context: 1, 2, 4, 8, 12, 16 tokens
# h2o_sinks keeps budget - num_sinks - int(recent_ratio * budget) heavy hitters: with its defaults (4 sinks,
# half the budget recent) none at every budget up to 8 tokens, where it is sinks + recent. So here it has
# 1 sink and a quarter of the budget recent (at 2 tokens: 1 sink + 1 heavy hitter) and skips the 1-token
# budget, which cannot hold a sink and a heavy hitter.
H2O_SINKS = {"name": "h2o_sinks", "num_sinks": 1, "recent_ratio": 0.25}
POLICIES = ["window", "sinks", "h2o", H2O_SINKS, "tova", "snapkv", "knorm", "random", "scissorhands"]
MODES = ["prefill", "continuous"]

eval_policies = [{"policy": "full", "budget": 1.0}] + [
    {"policy": policy, "budget": budget, "mode": mode}
    for mode in MODES for policy in POLICIES for budget in BUDGETS
    if not (policy is H2O_SINKS and budget < 1 / 8)
]


def run(label: str, mixer: dict | list[dict], seed: int, **extra) -> rk.RunConfig:
    return rk.RunConfig(model=dict(vocab_size=VOCAB_SIZE, d_model=64, num_layers=2, mixer=mixer, mlp="none"),
                        task=TASK, train=dict(lr=5e-3, max_steps=1000, seed=seed), label=label, **extra)


configs = [
    config for seed in SEEDS for config in (
        run("attention", {"name": "attention", "position": "rope", "short_conv": 4}, seed,
            eval_policies=eval_policies),
        run("sliding_window", {"name": "attention", "position": "rope", "window": 16, "short_conv": 4}, seed),
        run("based", based(feature_dim=8, window=8), seed),
        run("gla", {"name": "gla", "num_heads": 2, "short_conv": 4}, seed),
        run("deltanet", {"name": "deltanet", "num_heads": 2, "short_conv": 4}, seed),
        run("mamba", {"name": "mamba", "d_state": 16}, seed),
    )
]
