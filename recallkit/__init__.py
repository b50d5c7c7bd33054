"""recallkit: measure the recall-vs-inference-state trade-off of efficient sequence models."""

from typing import Any

from recallkit import inference, ops
from recallkit.config import ModelConfig, RunConfig, TrainConfig
from recallkit.evaluate import evaluate
from recallkit.kv import POLICIES
from recallkit.mixers import MIXERS
from recallkit.model import LanguageModel, build_model
from recallkit.tasks import TASKS, make_task

__all__ = [
    "MIXERS",
    "POLICIES",
    "TASKS",
    "LanguageModel",
    "ModelConfig",
    "RunConfig",
    "RunResult",
    "TrainConfig",
    "build_model",
    "evaluate",
    "inference",
    "make_task",
    "ops",
    "train",
]
__version__ = "0.1.0"

_LAZY = {"train": "recallkit.training", "RunResult": "recallkit.training"}
"""Names imported on first use, so that reading results (``recallkit.report``) never loads the
training loop."""


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recallkit' has no attribute {name!r}")
