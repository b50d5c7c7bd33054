"""The reversal curse (Berglund et al. 2023, arXiv 2309.12288) at CPU scale: parametric vs in-context recall.

In weights: 100 facts ``A r B`` are trained forward, half of them also in reverse (``B r^-1 A``);
the test asks every fact forward and reverse with nothing in context. The per-slice table of the
report (slice ``probe``) shows forward recall (0), reverse recall of facts trained both ways (1)
and of facts only seen forward (2): the reversal curse is probe 2 near chance while 0 and 1 are
near 1. In context: the fact is in the prompt and the question asks either direction (slice
``direction``); models that can look back answer both.

``recallkit run sweeps/reversal.py --out runs/reversal``
"""

import recallkit as rk

NUM_FACTS = 100
VOCAB_SIZE = 5 + 2 * NUM_FACTS
MIXERS: dict[str, dict] = {
    "attention": {"name": "attention", "num_heads": 2, "position": "rope"},
    "mamba": {"name": "mamba"},
    "deltanet": {"name": "deltanet", "num_heads": 2, "short_conv": 4},
}


def reversal_task(mode: str) -> dict:
    seq_len = {"train": 33, "test": 4, "in_context": 8}[mode]
    return dict(name="reversal", vocab_size=VOCAB_SIZE, seq_len=seq_len, num_facts=NUM_FACTS, mode=mode)


def reversal_run(label: str, mixer: dict, in_context: bool) -> rk.RunConfig:
    train_mode, test_mode = ("in_context", "in_context") if in_context else ("train", "test")
    return rk.RunConfig(
        model=dict(vocab_size=VOCAB_SIZE, d_model=64, num_layers=2, mixer=mixer),
        task=reversal_task(train_mode), eval_tasks=[reversal_task(test_mode)], label=label,
        train=dict(lr=3e-3, max_steps=1500, batch_size=32, num_train_examples=20_000, num_test_examples=1000),
    )


configs = [reversal_run(label, mixer, in_context)
           for in_context in (False, True) for label, mixer in MIXERS.items()]
