"""The KV-cache protocol every attention layer's state follows (docs/design.md section 8).

An attention layer reads its cache through five members, whichever cache it holds: the plain
full / sliding-window cache (``recallkit.mixers.attention.AttentionState``), an evicting cache
under a policy (:class:`recallkit.kv.cache.KVCache`), or a pretrained model's cache
(``recallkit.hf``). One block of T new tokens goes through them in this order:

    p0 = cache.next_position              # position the attention gives the first new token
    q, k = rotate(q, k) at p0 .. p0 + T - 1 (RoPE)
    cache = cache.append(k, v)
    attend q to (cache.key, cache.value) at cache.key_positions (masks and biases from positions)
    cache = cache.observe(attention)     # the cache ranks / evicts; a plain cache trims its window

``append`` and ``observe`` return the cache: a new one for the plain cache (so a state can be
continued more than once, as prefix caching does), the same object for a cache that mutates.

Keys are stored as the attention uses them (rotated at their positions), so a cache that keeps
tokens at their original positions needs no re-rotation, and one that re-indexes (StreamingLLM)
rotates the kept keys by their shift with the layer's ``rotate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from torch import Tensor

Rotate = Callable[[Tensor, Tensor], Tensor]
"""``rotate(x (..., S, d), shift (..., S)) -> x`` rotated by ``shift`` positions (RoPE composes)."""


class KVState(Protocol):
    """One attention layer's cache, as the attention reads it."""

    key: Tensor  # (B, H_kv, S, d_h) held keys, rotated at their positions
    value: Tensor  # (B, H_kv, S, d_h)
    seen: int  # tokens appended so far

    @property
    def next_position(self) -> int:
        """Position the attention gives the next appended token."""

    @property
    def key_positions(self) -> Tensor:
        """Positions of the held keys: (S,) shared by all rows and heads, or (B, H_kv, S)."""

    @property
    def needs_attention(self) -> bool:
        """Whether :meth:`observe` uses the attention probabilities (else it may be given None)."""

    @property
    def stepwise(self) -> bool:
        """Whether the cache must see one token at a time (it evicts after every token)."""

    def append(self, key: Tensor, value: Tensor) -> KVState:
        """Add T tokens: key, value (B, H_kv, T, d_h), keys rotated from ``next_position`` on."""

    def observe(self, attention: Tensor | None) -> KVState:
        """The new queries' attention (B, H_kv, T, S), averaged over the query heads of each KV
        head; then drop what the cache does not keep."""


LayerCache = Callable[["Rotate | None"], KVState]
"""``cache(rotate) -> a fresh cache`` for one attention layer; ``rotate`` is its RoPE rotation or None."""

CacheFactory = Callable[[int], LayerCache]
"""``factory(layer)``: the :data:`LayerCache` of attention layer ``layer`` (counted from 0 over the
model's attention layers)."""
