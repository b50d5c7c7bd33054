"""Learning tests (slow), one per mixer of the zoo: a short MQAR learnt to a measured accuracy.

Task: MQAR with V=128, T=32 and 4 key-value pairs; 2 layers, d=64, no MLP, the same short conv in
front of every mixer that lacks one of its own, AdamW lr 5e-3, batch 32, at most MAX_STEPS steps
(the accuracy / step noted beside a case is a one-thread run to an early stop at 0.99; the test stops
each case at its minimum, and two worker processes train the cases side by side). Each threshold
sits below the accuracy measured and above the trivial baseline: answering one of the 4 values in
context scores 0.25 (the recency solution; uniform over the values, 1/64, is far below), so a mixer
that learns no recall fails it.

The input-independent long convolutions (BaseConv, Hyena) and the SSMs (Mamba, Mamba-2) sit on that
0.25 plateau at T=32 for 1000 steps; they are tested where they are measured to leave it: T=16, V=64
(V=32 for Mamba), 4 pairs, with a longer budget (SHORT below).
"""

from __future__ import annotations

import pytest

import recallkit as rk
from recallkit.recipes import based
from recallkit.sweep.runner import run_sweep

pytestmark = pytest.mark.slow

MAX_STEPS = 1000
TASK = dict(name="mqar", vocab_size=128, seq_len=32, num_kv_pairs=4)
CONV = 4

# Where the plateau mixers learn: MQAR V=64, T=16, 4 pairs (trivial baseline still 0.25), more steps.
SHORT = {"task": dict(name="mqar", vocab_size=64, seq_len=16, num_kv_pairs=4), "max_steps": 3000}

# (label, mixer, minimum accuracy[, setting]), measured accuracy / step it stopped at in the comment
# (seed 0; seeds 1 and 2 of the new mixers' settings: sweeps/short_mqar.py and the README);
# every minimum is above the trivial baseline 0.25. The fixed-filter and input-selective SSM-like
# models (BaseConv, Hyena, Mamba, Mamba-2) settle at about 1/4 at T=32, one query in four (the
# recency solution), as Zoology reports for them at small width. It is a plateau, not a ceiling:
# Mamba at lr 5e-3 stays at 0.25-0.29 for 3250 steps, then leaves it (0.38 at step 3500, 0.47 at
# 4000; measured on 1 thread); at T=16 BaseConv leaves it at step ~800, Mamba-2 at ~750, Hyena at ~900,
# Mamba (V=32) at ~1300.
CASES: list[tuple] = [
    ("attention", {"name": "attention", "position": "rope", "short_conv": CONV}, 0.9),  # 0.997 / 400
    ("mla", {"name": "mla", "short_conv": CONV}, 0.9),  # 0.994 / 450
    # 0.994 / 550
    ("linear_attention", {"name": "linear_attention", "feature_dim": 8, "short_conv": CONV}, 0.9),
    # 0.991 / 350 (MQAR's context as prefix)
    ("pla", {"name": "pla", "feature_dim": 8, "short_conv": CONV}, 0.9),
    ("based", based(feature_dim=8, window=8), 0.9),  # 0.986 at step 600
    ("retnet", {"name": "retnet", "short_conv": CONV}, 0.9),  # 0.990 / 550
    ("gla", {"name": "gla", "short_conv": CONV}, 0.9),  # 0.990 / 850
    ("deltanet", {"name": "deltanet", "short_conv": CONV}, 0.9),  # 0.998 / 450
    ("gated_deltanet", {"name": "gated_deltanet", "short_conv": CONV}, 0.9),  # 0.990 / 650
    ("kda", {"name": "kda", "short_conv": CONV}, 0.9),  # 0.990 / 700 (CI, 2 threads)
    # the defaults (4 heads of 16 dims, 64 slots each): 0.277 / 1000, the plateau (gate temperature 1: 0.262);
    # one head of 64 dims with 16 slots learns: 0.755 / 1500 (1 thread)
    ("gsa", {"name": "gsa", "num_heads": 1, "num_slots": 16, "short_conv": CONV}, 0.6, {"max_steps": 1500}),
    # T=32 with short_conv 4: 0.273 / 1000 (the plateau); T=16: 0.994 / 1300 (Mamba-2: 1700), 1 thread
    ("log_linear", {"name": "log_linear"}, 0.9, {**SHORT, "max_steps": 2000}),
    ("rwkv6", {"name": "rwkv6", "short_conv": CONV}, 0.9),  # 0.996 / 700 (1 thread)
    # expand_ratio 64 (one head): 0.560 / 1000 (1 thread); the default 16 (4 heads): 0.270 / 1000 and
    # lower_bound 0.9: 0.266 / 1000, the plateau; its keys 1 - f and sigmoid queries are all positive
    ("hgrn2", {"name": "hgrn2", "expand_ratio": 64, "short_conv": CONV}, 0.5),
    ("rwkv7", {"name": "rwkv7", "short_conv": CONV}, 0.9),  # 0.995 / 600 (1 thread)
    ("mamba3", {"name": "mamba3", "short_conv": CONV}, 0.9),  # 0.990 / 900 (1 thread)
    ("gated_deltaproduct", {"name": "gated_deltaproduct", "short_conv": CONV}, 0.9),  # 0.993 / 650 (1 thread)
    ("fox", {"name": "fox", "short_conv": CONV}, 0.9),  # 0.992 / 450 (1 thread); pro=True: 0.996 / 200
    # T=32: 0.266 / 1000 (the plateau); T=16: 0.991 / 1700, 1 thread
    ("mamba2", {"name": "mamba2"}, 0.9, {**SHORT, "max_steps": 2000}),
    # T=32: 0.261 / 1000; T=16, V=64: 0.326 / 1000 (0.34 at 1650 of 2000); T=16, V=32: 0.565 / 2000,
    # 0.990 / 2200 of 3000 (1 thread): with 16 keys its 16 states tell them apart (seed 2: 0.559 / 3000)
    ("mamba", {"name": "mamba"}, 0.9, {**SHORT, "task": {**SHORT["task"], "vocab_size": 32}}),
    # T=32: 0.267 / 1000 (the plateau); T=16, V=64: 0.362 / 3000 (seed 1: 0.991); T=16, V=32: 0.992 / 1550
    ("longhorn", {"name": "longhorn"}, 0.9, {**SHORT, "task": {**SHORT["task"], "vocab_size": 32}}),
    # T=32: 0.280 / 1000; T=16: 0.969 / 3000 (1 thread)
    ("base_conv", {"name": "base_conv", "kernel_size": "long", "max_len": 16}, 0.9, SHORT),
    ("hyena", {"name": "hyena", "max_len": 16}, 0.7, SHORT),  # T=32: 0.270 / 1000; T=16: 0.850 / 3000
    ("h3", {"name": "h3"}, 0.9),  # 0.996 / 400 (input_scale="zoh", the paper's: 0.05 / 1000)
]


def zoo_run(mixer: dict | list[dict], seed: int = 0, setting: dict | None = None,
            stop_at: float = 0.99) -> rk.RunConfig:
    task = (setting or {}).get("task", TASK)
    return rk.RunConfig(
        model=dict(vocab_size=task["vocab_size"], d_model=64, num_layers=2, mixer=mixer, mlp="none"),
        task=task,
        train=dict(lr=5e-3, max_steps=(setting or {}).get("max_steps", MAX_STEPS), batch_size=32,
                   eval_every=50, seed=seed, early_stop_accuracy=stop_at),
    )


def test_every_registry_key_has_a_learning_case():
    keys = set()
    for _, mixer, *_ in CASES:
        keys.update(m["name"] for m in (mixer if isinstance(mixer, list) else [mixer]))
    assert keys == set(rk.MIXERS)


def test_every_minimum_is_above_the_trivial_baseline():
    assert all(minimum > 0.25 for _, _, minimum, *_ in CASES)  # one of the 4 values in context


@pytest.fixture(scope="module")
def zoo_rows(tmp_path_factory) -> dict[str, dict]:
    """Every case trained once, in two one-thread worker processes (1.5x the throughput of one
    two-thread process for models this small), longest budgets first, each stopped at the first
    evaluation that reaches its minimum (the same seeded run as to 0.99, truncated: a case that
    reached 0.99 passed its minimum on the way); the store row per label."""
    runs = {label: zoo_run(mixer, setting=setting, stop_at=minimum).model_copy(update={"label": label})
            for label, mixer, minimum, setting in ((*case, None)[:4] for case in CASES)}
    order = sorted(runs.values(), key=lambda run: -run.train.max_steps)
    rows = run_sweep(order, tmp_path_factory.mktemp("zoo"), executor="process", workers=2, quiet=True)
    by_id = {row["run_id"]: row for row in rows}
    return {label: by_id[run.run_id] for label, run in runs.items()}


@pytest.mark.parametrize(("label", "minimum"), [(case[0], case[2]) for case in CASES],
                         ids=[case[0] for case in CASES])
def test_mixer_learns_short_mqar(zoo_rows, label, minimum):
    row = zoo_rows[label]
    assert row["status"] == "done", row["error"]
    accuracy, steps = row["metrics"]["accuracy"], row["metrics"]["steps"]
    print(f"{label}: acc={accuracy:.3f} after {steps} steps ({row['wall_time']:.0f} s), "
          f"state={row['state_size']}")
    assert accuracy >= minimum
