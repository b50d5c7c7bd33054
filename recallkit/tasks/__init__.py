"""Synthetic recall tasks, registered by short key; each value is the task's config class."""

from typing import Any

from recallkit.base_config import TaskConfig
from recallkit.errors import RecallkitError
from recallkit.tasks.base import IGNORE_INDEX, Batch, eval_seed, train_seed
from recallkit.tasks.compositional_mqar import CompositionalMQARConfig
from recallkit.tasks.copy import CopyConfig
from recallkit.tasks.counting import CountingConfig
from recallkit.tasks.forgetting_mqar import ForgettingMQARConfig
from recallkit.tasks.lengths import LengthAxis, has_length_axis
from recallkit.tasks.mad_recall import FuzzyRecallConfig, NoisyRecallConfig
from recallkit.tasks.mqar import MQARConfig
from recallkit.tasks.ngram_lookup import NgramLookupConfig
from recallkit.tasks.niah import NiahConfig
from recallkit.tasks.phonebook import PhonebookConfig
from recallkit.tasks.reversal import ReversalConfig
from recallkit.tasks.selective_copy import SelectiveCopyConfig
from recallkit.tasks.set_disjointness import SetDisjointnessConfig
from recallkit.tasks.state_tracking import StateTrackingConfig
from recallkit.tasks.transforms import ReadTwiceConfig, read_twice
from recallkit.tasks.variable_tracking import VariableTrackingConfig

TaskConfig.register(MQARConfig, SetDisjointnessConfig, ReadTwiceConfig, CopyConfig, NgramLookupConfig,
                    PhonebookConfig, ReversalConfig, ForgettingMQARConfig, CompositionalMQARConfig,
                    SelectiveCopyConfig, StateTrackingConfig, VariableTrackingConfig, NiahConfig,
                    NoisyRecallConfig, FuzzyRecallConfig, CountingConfig)
TASKS: dict[str, type[TaskConfig]] = TaskConfig.registry
"""Every task config class by its ``name`` literal (add one with ``TaskConfig.register``)."""


def task_config(spec: dict[str, Any] | TaskConfig) -> TaskConfig:
    """A task config from ``{"name": key, **fields}`` (as stored in a run's JSON) or an instance;
    ValueError for an unknown name."""
    return TaskConfig.resolve(spec)


def make_task(key: str, **fields: Any) -> TaskConfig:
    """Build a task config, e.g. ``make_task("mqar", vocab_size=256, seq_len=64, num_kv_pairs=8)``."""
    if key not in TASKS:
        raise RecallkitError(f"unknown task {key!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[key](**fields)


__all__ = [
    "IGNORE_INDEX", "TASKS", "Batch", "CompositionalMQARConfig", "CopyConfig", "CountingConfig",
    "ForgettingMQARConfig", "FuzzyRecallConfig", "LengthAxis", "MQARConfig", "NgramLookupConfig",
    "NiahConfig", "NoisyRecallConfig", "PhonebookConfig", "ReadTwiceConfig", "ReversalConfig",
    "SelectiveCopyConfig", "SetDisjointnessConfig", "StateTrackingConfig", "VariableTrackingConfig",
    "eval_seed", "has_length_axis", "make_task", "read_twice", "task_config", "train_seed",
]
