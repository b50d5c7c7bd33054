"""The Zoology MQAR sweep (Arora et al. 2023, arXiv 2312.04927, figure 2) at CPU scale.

MQAR with T in {64, 128, 256} and T/16 key-value pairs, 2-layer models without MLPs at widths
{64, 128, 256}, the best of a small learning-rate grid per point. Expected shape: attention solves
every length at every width, while the gated convolutions (BaseConv, H3, Hyena) need a width that
grows with T; Based and Mamba sit between.

CPU-scale choices: every length trains on TOKENS_PER_STEP tokens per step (batch 2048 / T), so
each step carries the same number of tokens; training mixes examples with T/64, T/32 and T/16
pairs, our choice (Zoology's figure-2 config trains each run on its one (T, T/16) setting): the
easier ones speed up learning (attention at T=256, d=64 reached 0.99 at step 800 instead of 900);
evaluation uses T/16 as in Zoology; runs stop at 0.99 accuracy or after MAX_STEPS;
attention gets RoPE and a short conv (without them it plateaus for thousands of steps at this
scale, see sweeps/quickstart.py); models whose block has no short conv of its own get the same
conv4 in front. The two learning rates matter: attention at T=256, d=256 stays at 0.03 for 1000
steps at 5e-3 and reaches 0.99 by step 500 at 1.5e-3, while d=64 and 128 learn at 5e-3.

Cost, measured on one thread per run at 2048 tokens per step (the kernels of 2026-12-04): d=64 8-32
ms per step (Mamba 52), d=128 17-73 ms (Mamba 105-109), d=256 42-200 ms (Mamba 253-268); an
evaluation of 256 sequences took up to 1.1 / 4.0 / 11 s at d=64 / 128 / 256 in one batch (two cells
timed at once), 2.0-2.7x less at T=256 in the 4096-token minibatches that `recallkit.evaluate` now
uses. Measured whole on an otherwise idle machine (2026-12-05, 2 process workers, one thread each):
the 126-run grid took 74 min wall and 147 min of runs (d=64 19 min, d=128 36 min, d=256 92 min of
runs; the longest run, Mamba at d=256, T=256, 6.1 min), against about 7 h at an earlier stop (older
kernels, 256-sequence evaluations, a CPU shared with other work). Results are in docs/results.md
(at three seeds: attention solves every point; H3 is bimodal beyond T=64 at every width). Run it
resumably in the background (a GPU or a Ray cluster is the better home for it):
``recallkit run sweeps/zoology.py --out runs/zoology --executor process``.

Parts follow the grid (docs/results.md): its d=64 row again at seeds 1 and 2 (84 runs, about 22 min
wall), so that every d=64 point has a mean and a 95% interval; Zoology's own data setting (V=8192,
T/16 pairs only) at T=64, d=64 over three seeds (21 runs); the plateau mixers at T=64, d=64 with
four times the steps; then, added later and listed last, the d=128 row at seeds 1 and 2 (84 runs,
39 min wall, 78 min of runs), the d=256 row at seeds 1 and 2 (84 runs, about 105 min wall and 210
min of runs beside other work) and the 4x-step runs at seeds 1 and 2 (6 runs). The whole file:
about 4.5 h wall with 2 workers.
"""

import recallkit as rk
from recallkit.recipes import based

VOCAB_SIZE = 256
SEQ_LENS = [256, 128, 64]  # longest first: the process pool starts the longest runs first
WIDTHS = [256, 128, 64]
LEARNING_RATES = [5e-3, 1.5e-3]
MAX_STEPS = 1000
TOKENS_PER_STEP = 2048  # batch = TOKENS_PER_STEP / T: every length sees the same tokens and queries per step

MIXERS: dict[str, dict | list[dict]] = {
    "attention": {"name": "attention", "num_heads": 1, "position": "rope", "short_conv": 4},
    "base_conv": {"name": "base_conv", "kernel_size": "long"},
    "h3": {"name": "h3"},
    "hyena": {"name": "hyena"},
    "based": based(feature_dim=16, window=16),
    "mamba": {"name": "mamba"},
    "linear_attention": {"name": "linear_attention", "feature_map": "elu", "feature_dim": 16,
                         "short_conv": 4},
}


# Every row of the grid runs at three seeds: seed 0 in the grid, seeds 1 and 2 in later parts.
SEEDS = [0, 1, 2]
# Zoology's own data setting beside ours, all else equal (T=64, d=64, lr 5e-3, the 3 seeds): its
# figure-2 config draws from a vocabulary of 8192 and trains each run on its one (T, T/16) setting,
# where ours uses 256 and mixed pair counts. Labels end in "(V8192)".
PAPER_VOCAB_SIZE = 8192
# Is the recency plateau of the SSM and long-conv models (about 1/4 here) a budget effect? The same
# runs (T=64, d=64, lr 5e-3, seeds 0-2) with 4x the steps; labels end in "(4000 steps)".
PLATEAU_MIXERS = ["mamba", "base_conv", "hyena"]
LONG_STEPS = 4 * MAX_STEPS


def mqar_task(seq_len: int, num_kv_pairs: int | list[int], vocab_size: int = VOCAB_SIZE) -> dict:
    """MQAR at length ``seq_len`` with ``num_kv_pairs`` pairs (a list mixes counts evenly)."""
    return dict(name="mqar", vocab_size=vocab_size, seq_len=seq_len, num_kv_pairs=num_kv_pairs)


def zoology_run(label: str, mixer: dict | list[dict], d_model: int, seq_len: int, lr: float,
                seed: int = 0, paper_data: bool = False, steps: int = MAX_STEPS) -> rk.RunConfig:
    """A 2-layer, MLP-free model of width ``d_model`` trained and evaluated on MQAR at ``seq_len``;
    ``paper_data``: Zoology's vocabulary and its one (T, T/16) training setting."""
    vocab = PAPER_VOCAB_SIZE if paper_data else VOCAB_SIZE
    pairs = seq_len // 16 if paper_data else [seq_len // 64, seq_len // 32, seq_len // 16]
    label = f"{label} (V{vocab})" if paper_data else label
    return rk.RunConfig(
        model=dict(vocab_size=vocab, d_model=d_model, num_layers=2, mixer=mixer, mlp="none"),
        task=mqar_task(seq_len, pairs, vocab), eval_tasks=[mqar_task(seq_len, seq_len // 16, vocab)],
        label=label if steps == MAX_STEPS else f"{label} ({steps} steps)",
        train=dict(lr=lr, max_steps=steps, batch_size=TOKENS_PER_STEP // seq_len, seed=seed),
    )


def seeded_row(d_model: int) -> list[rk.RunConfig]:
    """The grid's row at width ``d_model`` again at seeds 1 and 2 (seed 0 is in the grid): every point
    of the row gets a mean and a 95% interval."""
    return [
        zoology_run(label, mixer, d_model, seq_len, lr, seed)
        for seed in SEEDS[1:]
        for seq_len in SEQ_LENS
        for label, mixer in MIXERS.items()
        for lr in LEARNING_RATES
    ]


configs = (
    [
        zoology_run(label, mixer, d_model, seq_len, lr)
        for seq_len in SEQ_LENS
        for d_model in WIDTHS
        for label, mixer in MIXERS.items()
        for lr in LEARNING_RATES
    ]
    + seeded_row(64)
    + [  # Zoology's data setting; ours at T=64, d=64, lr 5e-3 is the seeded row's
        zoology_run(label, mixer, 64, 64, 5e-3, seed, paper_data=True)
        for seed in SEEDS
        for label, mixer in MIXERS.items()
    ]
    + [zoology_run(label, MIXERS[label], 64, 64, 5e-3, steps=LONG_STEPS) for label in PLATEAU_MIXERS]
    # added later than the parts above and listed after them, which keeps their order: the d=128 and
    # d=256 rows at seeds 1 and 2, and the plateau mixers' 4x-step runs at seeds 1 and 2
    + seeded_row(128)
    + seeded_row(256)
    + [zoology_run(label, MIXERS[label], 64, 64, 5e-3, seed, steps=LONG_STEPS)
       for seed in SEEDS[1:] for label in PLATEAU_MIXERS]
)
