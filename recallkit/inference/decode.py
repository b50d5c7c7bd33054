"""Evaluation with an evicting KV cache on every attention layer.

Each attention layer's state is a :class:`~recallkit.kv.KVCache` under one policy and budget (other
layers keep their own recurrent state). In ``continuous`` mode the model reads each sequence token
by token (the caches evict after every token); in ``prefill`` mode it reads the context in one
block, the caches compress once, and the rest is read token by token. Predictions are the greedy
next tokens, scored like ``rk.evaluate``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recallkit.kv import Budget, KVCache, Mode, Policy, make_policy, resolve_budget
from recallkit.model import LanguageModel, ModelState
from recallkit.tasks.base import Batch


def evicting_state(model: LanguageModel, batch_size: int, policy: Policy, budget: int, mode: Mode,
                   seed: int = 0) -> tuple[ModelState, list[KVCache]]:
    """The model's empty state with a fresh KVCache in each attention layer; returns (state, caches)."""
    if model.prefix_aware:
        raise ValueError("eviction policies are evaluated token by token from the first token, which a "
                         "prefix-aware model (pla) does not read the way it was trained")
    caches: list[KVCache] = []

    def factory(layer: int):
        def make(rotate):
            caches.append(KVCache(policy, budget, mode, seed + layer, rotate=rotate))
            return caches[-1]
        return make

    state = model.init_state(batch_size, cache=factory)
    if not caches:
        raise ValueError("eviction policies apply to softmax attention layers with per-head keys and values "
                         "(the attention mixer, a pretrained model's attention; not mla's latents or fox's "
                         "decayed cache), and this model has none")
    return state, caches


@torch.no_grad()
def predict_with_policy(model: LanguageModel, inputs: Tensor, context_len: int, policy: Policy, budget: int,
                        mode: Mode, seed: int = 0) -> tuple[Tensor, int]:
    """Greedy predictions (B, T) for sequences sharing ``context_len``, and the numbers of state one
    sequence holds at the end (evicted KV caches plus every other layer's state)."""
    B, T = inputs.shape
    state, caches = evicting_state(model, B, policy, budget, mode, seed)
    predictions = torch.empty_like(inputs)
    start = context_len if mode == "prefill" else 0
    if start:
        logits, state = model.prefill(inputs[:, :start], state=state)
        predictions[:, :start] = logits.argmax(-1)
    for t in range(start, T + 1):
        if t >= context_len:  # the end of the context: compress once (later calls do nothing)
            for cache in caches:
                cache.compress()
        if t < T:
            logits, state = model.step(inputs[:, t], state)
            predictions[:, t] = logits.argmax(-1)
    others = model.state_size(T) - model.kv_state_size(T)  # recurrent layers, short-conv tails
    return predictions, others + sum(cache.numel() for cache in caches) // B


def evaluate_with_policy(model: LanguageModel, batch: Batch, policy: str | dict | Policy, budget: Budget,
                         mode: Mode = "continuous", batch_size: int = 256,
                         seed: int = 0) -> tuple[Tensor, dict]:
    """Predictions (N, T) under an eviction policy, and what it held: ``{"policy", "budget",
    "mode", "budget_tokens", "state_size"}`` (state per sequence at the end, the mean over groups
    of sequences that share a context length)."""
    policy = make_policy(policy)
    device = model.embed.weight.device
    predictions = torch.empty_like(batch.inputs)
    held, tokens = [], []  # per context-length group: state per sequence, budget in tokens
    for context_len in torch.unique(batch.prefix_len).tolist():
        rows = (batch.prefix_len == context_len).nonzero().squeeze(1)
        budget_tokens = resolve_budget(budget, int(context_len))
        group_held = 0
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            out, state_size = predict_with_policy(model, batch.inputs[part].to(device), int(context_len),
                                                  policy, budget_tokens, mode, seed)
            predictions[part] = out.cpu()
            group_held += state_size * len(part)
        held.append(group_held / len(rows))  # the group's mean, whatever its batches
        tokens.append(budget_tokens)
    info = {"policy": policy.name, "policy_config": policy.model_dump(), "budget": budget, "mode": mode,
            "budget_tokens": max(tokens), "state_size": round(sum(held) / len(held))}
    return predictions, info
