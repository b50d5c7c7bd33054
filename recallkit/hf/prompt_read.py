"""Read a prompt once, answer it under many eviction policies and budgets.

In ``prefill`` mode an evicting cache reads the whole prompt with every token and compresses once at
its end, from the attention statistics it gathered (:mod:`recallkit.kv.cache`). The reading is the
same for every policy and budget; only the compression differs. So :func:`read_prompt` reads a
prompt once into full, recording caches (keeping the last ``history`` queries' attention, enough for
every policy that ranks by recent queries), and :func:`fork_state` gives, per policy and budget, the
state a run with that policy alone would hold after the prompt: bit-identical, at the cost of one
compression instead of one reading (tested against the unshared run).

The unbounded setting (no policy) forks the full cache as it is: every row of one evaluation reads
the prompt through the same attention.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from recallkit.hf.adapter import HFModel, HFState
from recallkit.hf.evicting import cached_forward, evicting_kv_only, evicting_layers
from recallkit.kv import KVCache, Policy, make_policy

RECORDED_HISTORY = 64
"""Queries whose attention a read records at least: SnapKV's window and Scissorhands' history (8
and 16 by default) fit; a policy asking for more is read again with its own history."""


@dataclass
class ReadPrompt:
    """A prompt (1, T) read with full caches that have not compressed.

    Attributes:
        logits: (1, V) next-token logits after the prompt's last token.
        state: the model's state after the prompt (do not continue it: fork it).
        caches: the attention layers' recording caches, in layer order.
        num_tokens: T.
    """

    logits: Tensor
    state: HFState
    caches: list[KVCache]
    num_tokens: int

    @property
    def history(self) -> int:
        return self.caches[0].history


@torch.no_grad()
def read_prompt(model: HFModel, ids: list[int], history: int = RECORDED_HISTORY) -> ReadPrompt:
    """Read ``ids`` through the model with a full, prefill-mode recording cache in every attention
    layer (a ValueError for a model without attention layers)."""
    caches: list[KVCache] = []
    full = make_policy("full")

    def factory(layer: int):
        def make(rotate):
            caches.append(KVCache(full, None, "prefill", layer, rotate=rotate, history=history))
            return caches[-1]
        return make

    state = model.init_state(1, cache=factory)
    if not caches:
        raise ValueError("eviction policies apply to softmax attention layers, and this model has none")
    inputs = torch.tensor([ids], device=model.embed.weight.device)
    logits, cache = cached_forward(model.model, inputs, state.cache, logits_to_keep=1)  # the last only
    return ReadPrompt(logits[:, -1], HFState(cache, len(ids)), caches, len(ids))


def fork_state(read: ReadPrompt, policy: Policy | None, budget_tokens: int | None,
               seed: int = 0) -> tuple[HFState, list[KVCache]]:
    """The state after ``read``'s prompt under ``policy`` at ``budget_tokens``, compressed (prefill
    mode; seeded per layer as a fresh run's caches are), and its attention caches. ``policy=None``
    keeps everything. ``read`` stays as it was, so it can be forked again."""
    policy = make_policy("full") if policy is None else policy
    forks = [kv.fork(policy, budget_tokens, seed + n) for n, kv in enumerate(read.caches)]
    shared = {id(kv): kv for kv in read.caches}  # copied by reference: replaced just below
    cache = copy.deepcopy(read.state.cache, shared)  # the recurrent layers of a hybrid are copied
    for layer, kv in zip(evicting_layers(cache), forks, strict=True):
        layer.kv = kv
        kv.compress()
    return HFState(cache, read.state.position), forks


PAD_POSITION = torch.iinfo(torch.int64).max // 2
"""Where a stack places the padding after a shorter fork's tokens: after every query, so none sees it."""


def stack_states(states: list[HFState], caches: list[list[KVCache]]) -> HFState | None:
    """One state of batch k holding ``k`` forks of one read (each (1, ...), with its ``caches``) side by
    side, so one forward pass continues all of them; None when they cannot share one: a layer that is
    not an evicting cache (a hybrid's recurrent layer), or forks that place the next token at
    different positions (a re-indexing policy). A fork holding fewer tokens than the longest is
    padded after its own with keys at ``PAD_POSITION``, which the attention masks (the cache is
    marked ``padded``). No policy evicts after a fork has compressed, so the stack keeps every token,
    at the positions each fork attends with."""
    if not all(evicting_kv_only(state.cache) for state in states):
        return None
    if len({c[0].next_position for c in caches}) != 1:
        return None
    full = make_policy("full")
    shared = {id(layer.kv): layer.kv for layer in evicting_layers(states[0].cache)}  # replaced below
    stacked = copy.deepcopy(states[0].cache, shared)
    for n, layer in enumerate(evicting_layers(stacked)):
        rows = [fork[n] for fork in caches]
        width = max(map(len, rows))  # per layer: a sliding-window layer holds fewer than a full one
        kv = KVCache(full, None, "prefill", rotate=rows[0].rotate)
        kv.key = _padded([r.key for r in rows], width, 0.0)
        kv.value = _padded([r.value for r in rows], width, 0.0)
        kv.positions = _padded([r.key_positions for r in rows], width, PAD_POSITION)  # as each fork attends
        kv.accumulated = _padded([r.accumulated for r in rows], width, 0.0)
        kv.last = _padded([r.last for r in rows], width, 0.0)
        kv.seen, kv.compressed, kv.padded = rows[0].next_position, True, width > min(map(len, rows))
        layer.kv = kv
    return HFState(stacked, states[0].position)


def _padded(rows: list[Tensor], width: int, fill: float | int) -> Tensor:
    """(1, H_kv, S_i, ...) each -> (k, H_kv, width, ...), ``fill`` after each row's own S_i slots."""
    out = rows[0].new_full((len(rows), rows[0].shape[1], width, *rows[0].shape[3:]), fill)
    for n, row in enumerate(rows):
        out[n, :, : row.shape[2]] = row[0]
    return out


def select_rows(state: HFState, rows: list[int]) -> HFState:
    """The sequences ``rows`` of a stacked state (:func:`stack_states`), in place."""
    layers = evicting_layers(state.cache)
    index = torch.tensor(rows, device=layers[0].kv.key.device)
    for layer in layers:
        kv = layer.kv
        kv.key, kv.value, kv.positions = (t.index_select(0, index) for t in (kv.key, kv.value, kv.positions))
        kv.accumulated, kv.last = kv.accumulated.index_select(0, index), kv.last.index_select(0, index)
    return state
