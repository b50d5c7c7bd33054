"""Learning tests (slow) of the 2026 task suite: each new task learnt to a measured accuracy by a model
of ``sweeps/suite.py``, trained exactly as that sweep trains it (its config, one thread, seed 0).

Each run stops at its minimum (``early_stop_accuracy``, checked every 100 steps) or at the sweep's
MAX_STEPS; the comment beside each row gives the step at which the sweep's run (same config, same
thread count, so the same curve) first passed the minimum and the accuracy it ended at. Every minimum
is far above the task's guessing baseline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import recallkit as rk
from recallkit.sweep import load_sweep

pytestmark = pytest.mark.slow

SUITE = load_sweep(Path(__file__).resolve().parent.parent / "sweeps" / "suite.py")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the sweep's process workers run one thread each
    yield
    torch.set_num_threads(threads)


def suite_config(label: str, setting: str) -> rk.RunConfig:
    (config,) = [c for c in SUITE if c.label == label and c.task.setting == setting and c.train.seed == 0]
    return config


# (model, task setting, minimum accuracy): measured in sweeps/suite.py, first step >= minimum / final
CASES = [
    ("deltanet", "forgetting_mqar T=32", 0.9),  # 300 / 0.992 (linear attention: 0.384 after 1000)
    ("attention", "compositional_mqar T=32", 0.9),  # 200 / 0.992
    ("attention", "niah 1 needle + 3 distractors T=32", 0.9),  # 600 / 0.992 (without: 100 / 1.000)
    ("attention", "noisy_recall T=32", 0.9),  # 300 / 0.999
    ("attention", "fuzzy_recall T=40", 0.9),  # 200 / 0.998
    ("deltanet", "selective_copy T=32", 0.9),  # 400 / 0.990 (attention: 0.881 after 1000)
    ("deltanet", "counting T=36", 0.9),  # 700 / 0.947
    ("linear_attention", "state_tracking parity L=2-12", 0.9),  # 200 / 0.994
]


@pytest.mark.parametrize(("label", "setting", "minimum"), CASES,
                         ids=[f"{setting.split()[0]}-{label}" for label, setting, _ in CASES])
def test_suite_task_is_learnt(label, setting, minimum):
    config = suite_config(label, setting)
    train = config.train.model_copy(update={"early_stop_accuracy": minimum})
    config = config.model_copy(update={"train": train})
    result = rk.train(config)
    accuracy, steps = result.metrics["accuracy"], result.metrics["steps"]
    print(f"{label} on {setting}: {accuracy:.3f} after {steps} steps")
    assert accuracy >= minimum, f"{label} on {setting}: {accuracy:.3f} after {steps} steps, minimum {minimum}"
