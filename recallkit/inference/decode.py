"""Evaluation through the recurrent ``step`` path with an evicting KV cache on every attention layer.

The model reads each sequence token by token; each attention layer's state is a
:class:`~recallkit.inference.cache.KVCache` under one policy and budget (other layers keep their
own recurrent state). Predictions are the greedy next tokens, scored like ``rk.evaluate``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from recallkit.inference.cache import KVCache, Mode
from recallkit.inference.policies import Policy, make_policy
from recallkit.mixers.attention import Attention, AttentionState
from recallkit.model import LanguageModel
from recallkit.tasks.base import Batch

Budget = int | float
"""Tokens per sequence and KV head (int >= 1) or a fraction of the context length (float in (0, 1])."""


def resolve_budget(budget: Budget, context_len: int) -> int:
    """Budget in tokens: an int as is, a float as that fraction of ``context_len`` (at least 1)."""
    if isinstance(budget, bool) or not isinstance(budget, int | float):
        raise ValueError(f"budget must be a token count or a fraction of the context, got {budget!r}")
    if isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ValueError(f"a fractional budget must be in (0, 1], got {budget}")
        return max(1, round(budget * context_len))
    if budget < 1:
        raise ValueError(f"a token budget must be >= 1, got {budget}")
    return budget


def _with_caches(state: Any, make_cache, caches: list[KVCache]) -> Any:
    """``state`` with every AttentionState inside it (also inside wrappers) replaced by a new cache."""
    if isinstance(state, AttentionState):
        caches.append(make_cache(len(caches)))
        return caches[-1]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {f.name: _with_caches(getattr(state, f.name), make_cache, caches) for f in dataclasses.fields(state)}
        return dataclasses.replace(state, **changes)
    return state


def evicting_state(model: LanguageModel, batch_size: int, policy: Policy, budget: int, mode: Mode,
                   seed: int = 0):
    """The model's empty state with a fresh KVCache in each attention layer; returns (state, caches)."""
    if any(block.mixer.prefix_aware for block in model.blocks):
        raise ValueError("eviction policies are evaluated token by token from the first token, which a "
                         "prefix-aware model (pla) does not read the way it was trained")
    caches: list[KVCache] = []
    state = model.init_state(batch_size)
    layers = [_with_caches(s, lambda i: KVCache(policy, budget, mode, seed + i), caches) for s in state.layers]
    if not caches:
        raise ValueError("eviction policies apply to softmax attention layers, and this model has none")
    return dataclasses.replace(state, layers=layers), caches


@torch.no_grad()
def predict_with_policy(model: LanguageModel, inputs: Tensor, context_len: int, policy: Policy, budget: int,
                        mode: Mode, seed: int = 0) -> tuple[Tensor, int]:
    """Greedy predictions (B, T) for sequences sharing ``context_len``, and the numbers of state one
    sequence holds at the end (evicted KV caches plus every other layer's state)."""
    B, T = inputs.shape
    state, caches = evicting_state(model, B, policy, budget, mode, seed)
    predictions = torch.empty_like(inputs)
    for t in range(T):
        logits, state = model.step(inputs[:, t], state)
        predictions[:, t] = logits.argmax(-1)
        if t + 1 == context_len:
            for cache in caches:
                cache.compress()
    attention = [b.mixer.core for b in model.blocks if isinstance(b.mixer.core, Attention)]
    others = model.state_size(T) - sum(a.state_size(T) for a in attention)  # e.g. short-conv tails
    return predictions, others + sum(cache.numel() for cache in caches) // B



def evaluate_with_policy(model: LanguageModel, batch: Batch, policy: str | dict | Policy, budget: Budget,
                         mode: Mode = "continuous", batch_size: int = 256, seed: int = 0) -> tuple[Tensor, dict]:
    """Predictions (N, T) under an eviction policy, and what it held: ``{"policy", "budget",
    "mode", "budget_tokens", "state_size"}`` (state per sequence at the end, the mean over groups
    of sequences that share a context length)."""
    policy = make_policy(policy)
    device = model.embed.weight.device
    predictions = torch.empty_like(batch.inputs)
    held, tokens = [], []
    for context_len in torch.unique(batch.prefix_len).tolist():
        rows = (batch.prefix_len == context_len).nonzero().squeeze(1)
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            budget_tokens = resolve_budget(budget, int(context_len))
            out, state_size = predict_with_policy(model, batch.inputs[part].to(device), int(context_len), policy,
                                                  budget_tokens, mode, seed)
            predictions[part] = out.cpu()
            held.append(state_size)
            tokens.append(budget_tokens)
    info = {"policy": policy.name, "policy_config": policy.model_dump(), "budget": budget, "mode": mode,
            "budget_tokens": max(tokens), "state_size": round(sum(held) / len(held))}
    return predictions, info
