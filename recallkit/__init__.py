"""recallkit: measure the recall-vs-inference-state trade-off of efficient sequence models."""

from recallkit import inference, ops
from recallkit.config import ModelConfig, RunConfig, TrainConfig
from recallkit.evaluate import evaluate
from recallkit.inference.policies import POLICIES
from recallkit.mixers import MIXERS
from recallkit.model import LanguageModel, build_model
from recallkit.tasks import TASKS, make_task
from recallkit.train import RunResult, train

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
