"""The pretrained sources a config may name, known without importing the ``recallkit.hf`` package
(which imports the model, and so ``recallkit.config``): the tiny random architectures
(``tiny:<arch>``, built by :mod:`recallkit.hf.tiny`) and which of them have no attention layer."""

from __future__ import annotations

TINY_ARCHS = ("llama", "mistral", "gpt_neox", "mamba", "mamba2", "qwen3_next", "lfm2", "falcon_h1")
ARCHS_WITHOUT_ATTENTION = ("mamba", "mamba2")
"""The architectures (tiny ones, and a model directory's ``model_type``) with no softmax attention
layer: no KV cache to evict."""


def unknown_tiny(arch: str) -> str | None:
    """Why ``tiny:<arch>`` names no tiny model (one line), or None when it does."""
    if arch in TINY_ARCHS:
        return None
    return f"unknown tiny architecture {arch!r}; supported: {', '.join(TINY_ARCHS)}"
