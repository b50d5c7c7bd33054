"""The demo sweep (`make demo`): the Zoology gap on MQAR in a few CPU minutes.

Softmax attention vs causal linear attention (Taylor / Based and elu+1 feature maps), 2 layers,
two widths, MQAR with vocab 256 at T = 64 (4 or 8 key-value pairs) and T = 128 (8 or 16 pairs).
Every mixer gets the same short conv in front (the Zoology / Based recipe): it hands each token its
predecessor, so the recall circuit forms in a few hundred steps instead of thousands on a laptop.
"""

import recallkit as rk

VOCAB_SIZE = 256
MIXERS = [
    {"name": "attention", "num_heads": 2, "rope_base": 10_000.0, "short_conv": 4},
    {"name": "linear_attention", "feature_map": "taylor", "feature_dim": 16, "short_conv": 4},
    {"name": "linear_attention", "feature_map": "elu", "feature_dim": 16, "short_conv": 4},
]
WIDTHS = [32, 64]
SETTINGS = [(64, [4, 8]), (128, [8, 16])]  # (seq_len, num_kv_pairs mixed evenly)

TRAIN = dict(lr=2e-3, batch_size=64, max_steps=800, warmup_steps=50, eval_every=100,
             num_train_examples=40_000, num_test_examples=256, seed=0)
LEARNING_TRAIN = {**TRAIN, "max_steps": 1500}
"""The budget of the slow learning tests: attention must reach 0.99 within it."""


def mqar_run(mixer: dict, d_model: int, seq_len: int, num_kv_pairs: int | list[int],
             train: dict = TRAIN) -> rk.RunConfig:
    """A 2-layer model without MLPs on MQAR(vocab 256) with the given mixer and width."""
    return rk.RunConfig(
        model=dict(vocab_size=VOCAB_SIZE, d_model=d_model, num_layers=2, mixer=mixer, mlp="none"),
        task=dict(name="mqar", vocab_size=VOCAB_SIZE, seq_len=seq_len, num_kv_pairs=num_kv_pairs),
        train=train,
    )


configs = [
    mqar_run(mixer, d_model, seq_len, pairs)
    for seq_len, pairs in SETTINGS
    for d_model in WIDTHS
    for mixer in MIXERS
]
