"""KV eviction inside a Hugging Face model: recallkit's evicting cache in every attention layer.

Each attention layer's slot of the transformers ``DynamicCache`` becomes an :class:`EvictingLayer`
holding a :class:`recallkit.kv.KVCache` (the layer cache protocol of :mod:`recallkit.kv.protocol`);
recurrent layers of a hybrid keep transformers' own state. While such a cache is in use the model
runs its attention through :func:`evicting_attention`, registered with transformers'
``AttentionInterface``: it attends the new queries to the held keys with a causal (and, for
sliding-window layers, windowed) mask built from the tokens' positions, hands the attention
probabilities, averaged over each KV head's query heads, to the cache, which then evicts.

RoPE: keys arrive rotated at their positions and are stored so; kept tokens keep their original
positions (the model is given ``position_ids``), and a re-indexing policy (StreamingLLM's sinks)
rotates the kept keys by their shift with the model's own rotary frequencies and places new tokens
at their cache slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from recallkit.errors import RecallkitError
from recallkit.kv.cache import KVCache
from recallkit.kv.protocol import CacheFactory, Rotate

ATTENTION_NAME = "recallkit_evicting"
_pending: list[EvictingLayer] = []  # the layer whose update ran last: its attention comes next


def _layer_classes():
    from transformers.cache_utils import CacheLayerMixin, LinearAttentionCacheLayerMixin

    return CacheLayerMixin, LinearAttentionCacheLayerMixin


def attention_layers(model: nn.Module) -> list[int]:
    """Indices of the model's layers whose cache holds attention keys and values (alone, or beside a
    recurrent state in a hybrid layer)."""
    from transformers import DynamicCache

    attention, _ = _layer_classes()
    layers = DynamicCache(config=model.config).layers
    if not layers:  # no config-driven layout: every layer is attention (lazily created DynamicLayers)
        return list(range(model.config.num_hidden_layers))
    return [i for i, layer in enumerate(layers) if isinstance(layer, attention)]


class _Evicting:
    """The KV part of a transformers cache layer, backed by a recallkit :class:`~recallkit.kv.KVCache`
    (``self.kv``): mixed into a plain attention layer class, or into a hybrid layer's own class
    (Falcon-H1: attention and Mamba-2 state in one layer), whose recurrent part stays as it is."""

    is_sliding = False
    is_croppable = False
    kv: KVCache

    @property
    def keys(self) -> Tensor | None:
        return self.kv.key

    @keys.setter
    def keys(self, value: Tensor | None) -> None:  # the base class sets None; the cache owns the keys
        pass

    @property
    def values(self) -> Tensor | None:
        return self.kv.value

    @values.setter
    def values(self, value: Tensor | None) -> None:
        pass

    def lazy_initialization(self, *args: Any, **kwargs: Any) -> None:
        if not args:  # a hybrid layer's conv or SSM state (keyword arguments): its own
            super().lazy_initialization(*args, **kwargs)

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any):
        self.kv.append(key_states, value_states)
        _pending[:] = [self]
        return self.kv.key, self.kv.value

    def get_seq_length(self) -> int:
        return self.kv.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return len(self.kv) + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        raise RecallkitError("an evicting cache cannot be reset; build a new state")


def _evicting_layer_class():
    attention, _ = _layer_classes()

    class _EvictingLayer(_Evicting, attention):
        """A transformers attention cache layer backed by a recallkit :class:`~recallkit.kv.KVCache`."""

        def __init__(self, kv: KVCache) -> None:
            self.kv = kv
            super().__init__()
            self.is_initialized = True

    return _EvictingLayer


_hybrid_classes: dict[type, type] = {}


def _make_evicting(layer: Any, kv: KVCache) -> Any:
    """An evicting twin of a hybrid layer (attention and a recurrent state in one): its class with
    :class:`_Evicting`'s KV part, and the layer's attributes (its recurrent part, still empty)."""
    base = type(layer)
    if base not in _hybrid_classes:
        _hybrid_classes[base] = type(f"Evicting{base.__name__}", (_Evicting, base), {})
    twin = object.__new__(_hybrid_classes[base])
    twin.__dict__.update(vars(layer))
    twin.kv, twin.is_initialized = kv, True
    return twin


EvictingLayer = Any  # the class is built on first use, when transformers is imported


def _rotation(model: nn.Module) -> Rotate | None:
    """The model's RoPE as a rotation by a position shift (None when it has no rotary embedding)."""
    rotary = next((m for name, m in model.named_modules() if name.endswith("rotary_emb")), None)
    inv_freq = getattr(rotary, "inv_freq", None)
    if inv_freq is None:
        return None

    def rotate(x: Tensor, shift: Tensor) -> Tensor:  # x (..., S, d), shift (..., S)
        angles = shift.to(torch.float32)[..., None] * inv_freq.to(x.device, torch.float32)  # (..., S, r/2)
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        rotary_dim = cos.shape[-1]  # partial RoPE (gpt_neox) rotates the first rotary_dim channels only
        head, rest = x[..., :rotary_dim], x[..., rotary_dim:]
        half = rotary_dim // 2
        rotated = torch.cat([-head[..., half:], head[..., :half]], dim=-1)
        return torch.cat([(head * cos + rotated * sin).to(x.dtype), rest], dim=-1)

    return rotate


def evicting_cache(model: nn.Module, factory: CacheFactory) -> Any:
    """A ``DynamicCache`` for ``model`` whose attention layers hold evicting caches from ``factory``."""
    from transformers import DynamicCache

    _register()
    _, linear = _layer_classes()
    cache = DynamicCache(config=model.config)
    indices = attention_layers(model)
    if not cache.layers:
        cache.layers = [None] * model.config.num_hidden_layers
        cache.layer_class_to_replicate = None
    layer_class, rotate = _evicting_layer_class(), _rotation(model)
    for n, i in enumerate(indices):
        kv = factory(n)(rotate)
        hybrid = isinstance(cache.layers[i], linear)
        cache.layers[i] = _make_evicting(cache.layers[i], kv) if hybrid else layer_class(kv)
    return cache


def evicting_kv_only(cache: Any) -> bool:
    """Whether every layer of ``cache`` is an evicting KV cache holding nothing else (no recurrent
    layer, no hybrid layer's recurrent state)."""
    _, linear = _layer_classes()
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(
        isinstance(getattr(layer, "kv", None), KVCache) and not isinstance(layer, linear) for layer in layers)


def evicting_layers(cache: Any) -> list[Any]:
    return [layer for layer in getattr(cache, "layers", [])
            if isinstance(getattr(layer, "kv", None), KVCache)]


@contextlib.contextmanager
def _attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    for sub in model.modules():  # sub-configs (e.g. a text config) are read by their modules
        config = getattr(sub, "config", None)
        if config is not None and config is not model.config and hasattr(config, "_attn_implementation"):
            config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous
        for sub in model.modules():
            config = getattr(sub, "config", None)
            if config is not None and config is not model.config and hasattr(config, "_attn_implementation"):
                config._attn_implementation = previous


def cached_forward(model: nn.Module, input_ids: Tensor, cache: Any,
                   logits_to_keep: int = 0) -> tuple[Tensor, Any]:
    """``model(input_ids, cache=cache)``: (logits (B, T, V), cache), or the last ``logits_to_keep``
    positions' logits (0 = all; transformers' convention). Through :func:`evicting_attention` when the
    cache evicts, the new tokens at the positions the evicting caches give them, one token at a time
    when they evict after every token."""
    layers = evicting_layers(cache)
    if not layers:
        out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=logits_to_keep)
        return out.logits, out.cache
    B, T = input_ids.shape
    if layers[0].kv.stepwise and T > 1:
        logits = [cached_forward(model, input_ids[:, t : t + 1], cache)[0] for t in range(T)]
        return torch.cat(logits, dim=1)[:, -logits_to_keep:], cache
    start = layers[0].kv.next_position
    position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
    with _attention_implementation(model, ATTENTION_NAME):
        out = model(input_ids=input_ids, cache=cache, use_cache=True, position_ids=position_ids,
                    logits_to_keep=logits_to_keep)
    return out.logits, cache


QUERY_CHUNK = 256
"""Queries attended at a time: a chunk's scores stay small, and it skips the keys after its last query."""


def evicting_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Any,
                       scaling: float | None = None, dropout: float = 0.0,
                       **kwargs: Any) -> tuple[Tensor, None]:
    """Attention of the new queries (B, H, T, d) to an evicting layer's keys and values (B, H_kv, S, d):
    output (B, T, H, d); the layer's cache observes the attention, averaged over each KV head's query
    heads (and evicts). Query heads are grouped by the KV head they share (GQA: query head h reads
    KV head h // group), so keys are never repeated."""
    if not _pending:
        raise RecallkitError("evicting attention ran without an evicting cache layer")
    kv = _pending.pop().kv
    B, H, T, d = query.shape
    H_kv, S = key.shape[1], key.shape[2]
    group = H // H_kv
    # the model's attention call names its window (Mistral's modules do not hold it, Qwen2's do)
    window = kwargs.get("sliding_window", getattr(module, "sliding_window", None))
    kv.reach = None if window is None else window - 1  # as transformers' sliding layers: W - 1 tokens
    scale = d**-0.5 if scaling is None else scaling
    queries = (query.float() * scale).view(B, H_kv, group, T, d)
    keys, values = key.float(), value  # (B, H_kv, S, d): one matmul per KV head, never repeated
    key_pos = kv.key_positions  # (B, H_kv, S), ascending: the new tokens are the last T held
    out = value.new_empty(B, H_kv, group, T, d)
    total = query.new_zeros(B, H_kv, S, dtype=torch.float32)  # attention received, summed over queries
    tail_rows = kv.tail_rows(T)
    tail = query.new_zeros(B, H_kv, tail_rows, S, dtype=torch.float32)  # the last queries' own
    for start in range(0, T, QUERY_CHUNK):
        stop = min(T, start + QUERY_CHUNK)
        seen = S - T + stop  # keys at later slots sit at later positions: no query of the chunk sees them
        # Without a window or padding, every key held before the chunk's first query is visible to all of it.
        first_masked = 0 if window is not None or kv.padded else S - T + start
        queried, masked = key_pos[:, :, None, S - T + start : seen], key_pos[:, :, None, first_masked:seen]
        distance = queried[..., None] - masked[..., None, :]
        allowed = distance >= 0  # (B, H_kv, 1, chunk, seen - first_masked)
        if window is not None:
            allowed = allowed & (distance < window)
        chunk = queries[:, :, :, start:stop].reshape(B, H_kv, group * (stop - start), d)
        scores = (chunk @ keys[:, :, :seen].transpose(-1, -2)).view(B, H_kv, group, stop - start, seen)
        scores[..., first_masked:].masked_fill_(~allowed, float("-inf"))
        attention = scores.softmax(dim=-1)  # (B, H_kv, g, chunk, seen)
        mixed = attention.to(values.dtype).view(B, H_kv, -1, seen) @ values[:, :, :seen]
        out[:, :, :, start:stop] = mixed.view(B, H_kv, group, stop - start, d)
        total[..., :seen] += attention.sum(dim=(2, 3)) / group
        first_tail = max(start, T - tail_rows)  # the chunk's first query that belongs to the tail
        if first_tail < stop:
            rows = slice(first_tail - (T - tail_rows), stop - (T - tail_rows))
            tail[:, :, rows, :seen] = attention[:, :, :, first_tail - start :].mean(dim=2)
    kv.observe_summary(total, tail, T)
    return out.view(B, H, T, d).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, evicting_attention)
