"""recallkit: measure the recall-vs-inference-state trade-off of efficient sequence models."""

import importlib
import sys
import types
from typing import Any

_LAZY = {
    "MIXERS": "recallkit.mixers", "POLICIES": "recallkit.kv", "TASKS": "recallkit.tasks",
    "LanguageModel": "recallkit.model", "build_model": "recallkit.model",
    "ModelConfig": "recallkit.config", "RunConfig": "recallkit.config", "TrainConfig": "recallkit.config",
    "RunResult": "recallkit.training", "train": "recallkit.training",
    "evaluate": "recallkit.evaluate", "make_task": "recallkit.tasks",
}
"""Names imported on first use: ``import recallkit`` loads no torch, so the CLI's launcher can turn a
Ctrl-C during that import into one line, and reading results never loads the training loop."""
_SUBMODULES = ("inference", "ops")

__all__ = sorted([*_LAZY, *_SUBMODULES])
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"recallkit.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recallkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *(name for name in globals() if name.startswith("__"))])


class _Package(types.ModuleType):
    """``rk.evaluate`` is the function, though a submodule of that name exists: importing a submodule
    binds it on its package, which would hide the lazy name; this property takes that binding."""

    @property
    def evaluate(self) -> Any:
        return importlib.import_module("recallkit.evaluate").evaluate

    @evaluate.setter
    def evaluate(self, _module: types.ModuleType) -> None:
        pass


sys.modules[__name__].__class__ = _Package
