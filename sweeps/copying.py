"""Repeat After Me (Jelassi et al. 2024, arXiv 2402.01032) at CPU scale: copying and phone-book lookup.

Copy: train on strings of 1..TRAIN_MAX characters (alphabet 26), evaluate at lengths up to 4x
longer (``eval_lengths``), for attention with RoPE / NoPE / ALiBi / Hard-ALiBi and for
fixed-state models (linear attention, Mamba, DeltaNet). Phone book: train on books of 4..12
entries, evaluate from 4 to 24 entries. The report draws ``lengths.png``: exact match (whole
string / whole number, teacher forced) against length with the training range shaded; greedy
generation through the recurrent step path is stored beside it (``greedy_exact_match``).

Expected shape (paper): attention learns to copy within the training range from few examples and
Hard-ALiBi generalises beyond it best among the positional schemes; fixed-state models copy short
strings only: their error grows with the length of what they must hold. The information bound
(``L log2 26`` bits > the state's float32 bits) lies far beyond these lengths for every model here,
so the failures measured are of learning, not of capacity.

``recallkit run sweeps/copying.py --out runs/copying --executor process``
"""

import recallkit as rk

VOCAB_SIZE = 32
TRAIN_MAX = 20
COPY_EVAL_LENGTHS = [5, 10, 15, 20, 25, 30, 40, 60, 80]
PHONEBOOK_EVAL_ENTRIES = [4, 8, 12, 16, 24]
D_MODEL = 64
STEPS = 1000  # early stop at 0.99 accuracy

ATTENTION = {"name": "attention", "num_heads": 4}
MIXERS: dict[str, dict] = {
    "attention (RoPE)": {**ATTENTION, "position": "rope"},
    "attention (NoPE)": {**ATTENTION, "position": "nope"},
    "attention (ALiBi)": {**ATTENTION, "position": "alibi"},
    "attention (Hard-ALiBi)": {**ATTENTION, "position": "hard_alibi"},
    "linear attention": {"name": "linear_attention", "feature_map": "elu", "feature_dim": 16,
                         "short_conv": 4},
    "mamba": {"name": "mamba"},
    "deltanet": {"name": "deltanet", "num_heads": 2, "short_conv": 4},
}
PHONEBOOK_MIXERS = ["attention (RoPE)", "attention (Hard-ALiBi)", "linear attention", "mamba", "deltanet"]


# The positional contrast (Hard-ALiBi vs RoPE vs NoPE vs ALiBi) at three seeds, in the budget above
# and in three times it (labels "..., 3000 steps")
POSITIONAL = ["attention (RoPE)", "attention (NoPE)", "attention (ALiBi)", "attention (Hard-ALiBi)"]
SEEDS = [0, 1, 2]
LONG_STEPS = 3000


def copy_run(label: str, mixer: dict, seed: int = 0, steps: int = STEPS) -> rk.RunConfig:
    """Copy strings of 1..TRAIN_MAX characters; evaluate at COPY_EVAL_LENGTHS."""
    task = dict(name="copy", vocab_size=VOCAB_SIZE, seq_len=2 * TRAIN_MAX + 3, min_len=1, max_len=TRAIN_MAX)
    return rk.RunConfig(
        model=dict(vocab_size=VOCAB_SIZE, d_model=D_MODEL, num_layers=2, mixer=mixer), task=task,
        eval_lengths=COPY_EVAL_LENGTHS, label=label if steps == STEPS else f"{label[:-1]}, {steps} steps)",
        train=dict(lr=3e-3, max_steps=steps, batch_size=64, num_train_examples=50_000, num_test_examples=200,
                   seed=seed),
    )


def phonebook_run(label: str, mixer: dict) -> rk.RunConfig:
    """Look up numbers in books of 4..12 entries; evaluate at PHONEBOOK_EVAL_ENTRIES entries."""
    seq_len = 1 + (12 + 3) * 8  # bos, 12 entries and 3 lookups of name (2) : number (4) sep
    book = dict(name="phonebook", vocab_size=48, seq_len=seq_len, min_entries=4, max_entries=12)
    return rk.RunConfig(
        model=dict(vocab_size=48, d_model=D_MODEL, num_layers=2, mixer=mixer), task=book,
        eval_lengths=PHONEBOOK_EVAL_ENTRIES, label=label,
        train=dict(lr=3e-3, max_steps=STEPS, batch_size=32, num_train_examples=30_000, num_test_examples=200),
    )


configs = [copy_run(label, mixer) for label, mixer in MIXERS.items()] + [
    phonebook_run(label, MIXERS[label]) for label in PHONEBOOK_MIXERS
] + [
    copy_run(label, MIXERS[label], seed, steps)
    for steps in (STEPS, LONG_STEPS) for seed in SEEDS for label in POSITIONAL
]
