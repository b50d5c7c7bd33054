"""Pretrained Hugging Face causal LMs on recallkit's frontier (the optional ``hf`` extra).

``load_model(source)`` gives any supported transformers model recallkit's model contract
(:class:`HFModel`), so the tasks, eviction policies, prefix caching and the contract checker apply to
it as to the zoo. Importing ``recallkit`` never imports this package (nor transformers).
"""

from recallkit.hf.adapter import HFModel, HFState
from recallkit.hf.load import DEFAULT_MODEL, SUPPORTED_ARCHS, load_model
from recallkit.hf.text_eval import evaluate_text
from recallkit.sources import TINY_ARCHS

__all__ = [
    "DEFAULT_MODEL", "SUPPORTED_ARCHS", "TINY_ARCHS", "HFModel", "HFState", "evaluate_text", "load_model",
]
