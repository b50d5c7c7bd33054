"""Just Read Twice at CPU scale (Arora et al. 2024, arXiv 2407.05483): causal recurrent models vs
the same models reading the prompt twice (JRT-Prompt) vs Prefix Linear Attention (JRT-RNN).

Three tasks at T = 64 (V = 256): MQAR with 8 pairs, and set disjointness with the short set first
(|A|, |B| = 4, 24) and the long set first (24, 4). Per task: Taylor linear attention (feature dim
4, small state on purpose) and Based (feature dim 4, window 8), each causal and read twice, their
prefix-aware counterparts PLA and JRT-RNN (trained with JRT's MLM loss on the prefix), and
softmax attention as the reference. The read-twice and PLA models decode with exactly the state
of the causal model (``state_size`` does not grow with the prompt for fixed-state models); the
report's table per task lists accuracy, state size and prefill tokens.

Expected (paper): reading twice and PLA lift recall at equal state; the long set first is harder
for causal recurrent models than the short set first, and not for PLA; attention does not care.
Measured: 24 minutes with 2 process workers on 2 cores shared with other work.
Run: ``recallkit run sweeps/jrt.py --out runs/jrt --executor process``.
"""

import recallkit as rk
from recallkit.recipes import based, jrt_rnn
from recallkit.tasks import read_twice

VOCAB_SIZE = 256
TASKS = {
    "mqar": dict(name="mqar", vocab_size=VOCAB_SIZE, seq_len=64, num_kv_pairs=8),
    "short_first": dict(name="set_disjointness", vocab_size=VOCAB_SIZE, seq_len=64, set_sizes=(4, 24)),
    "long_first": dict(name="set_disjointness", vocab_size=VOCAB_SIZE, seq_len=64, set_sizes=(24, 4)),
}
FEATURE_DIM, WINDOW = 4, 8
LINEAR = {"name": "linear_attention", "feature_map": "taylor", "feature_dim": FEATURE_DIM, "short_conv": 4}
PLA = {"name": "pla", "feature_map": "taylor", "feature_dim": FEATURE_DIM, "short_conv": 4}
TRAIN = dict(lr=5e-3, max_steps=1000, seed=0)


def run(label: str, mixer: dict | list[dict], task: dict, mlm: bool = False) -> rk.RunConfig:
    """A 2-layer d=64 model; the vocabulary keeps one extra id, JRT's MLM mask token."""
    return rk.RunConfig(
        model=dict(vocab_size=VOCAB_SIZE + 1, d_model=64, num_layers=2, mixer=mixer, mlp="none"),
        task=task, label=label, train={**TRAIN, "mlm": mlm},
    )


configs = []
for task in TASKS.values():
    twice = read_twice(task).model_dump()
    configs += [
        run("linear_attention", LINEAR, task),
        run("linear_attention + read twice", LINEAR, twice),
        run("pla", PLA, task, mlm=True),
        run("based", based(feature_dim=FEATURE_DIM, window=WINDOW), task),
        run("based + read twice", based(feature_dim=FEATURE_DIM, window=WINDOW), twice),
        run("jrt_rnn", jrt_rnn(feature_dim=FEATURE_DIM, window=WINDOW), task, mlm=True),
        run("attention", {"name": "attention", "position": "rope", "short_conv": 4}, task),
    ]
