"""An evicting KV cache for one attention layer (docs/design.md section 8).

The cache holds, per sequence and KV head, the kept tokens' keys (rotated at the positions the
attention gives them), values, original positions and the statistics policies rank tokens by:
accumulated attention (H2O), the last query's attention (TOVA), the last ``policy.history``
queries' attention (SnapKV, Scissorhands). Tokens stay sorted by position. Every sequence and head
keeps the same number of tokens, so the tensors stay dense. It follows the layer cache protocol of
:mod:`recallkit.kv.protocol`.

Modes: ``continuous`` evicts after every token once more than ``budget`` tokens are held (between
tokens the cache never holds more than ``budget``; a query attends to the ``budget`` kept tokens
plus itself, so the peak is budget + 1 and the ``window`` policy at budget b is a sliding window of
b + 1, the attention mixer's ``window=b + 1``); ``prefill`` reads the context with the full cache (in one
block or token by token: the statistics are the same), compresses once to ``budget`` when
:meth:`KVCache.compress` is called at the end of the context, and appends the decoded tokens after
it without evicting (as kvpress does).

Sliding-window layers: ``reach`` (set by the layer) is how many of the latest positions a query can
still read; older tokens are ranked below every other by every policy, and dropped as soon as every
row and head holds them (the oldest slots of each), and :meth:`KVCache.numel` counts only those in
reach, so a windowed layer is never charged for what its window masks. Until every row and head has
dropped a token, the tensors may hold it for some of them (a few steps; e.g. 128 slots held where
104 are counted).

Positions: the kept tokens keep their original positions; a policy that re-indexes (StreamingLLM's
``sinks`` with ``reindex_positions``) gives them the positions of their cache slots instead, and
the cache rotates their keys by the shift with the layer's ``rotate`` (RoPE rotations compose).
"""

from __future__ import annotations

from numbers import Integral
from typing import Literal

import torch
from torch import Tensor

from recallkit.kv.policies import Policy
from recallkit.kv.protocol import Rotate
from recallkit.ops.numerics import owned

Mode = Literal["continuous", "prefill"]


class KVCache:
    """Keys, values, positions and attention statistics of one attention layer.

    Args:
        policy: which tokens to keep when over budget (see :mod:`recallkit.kv.policies`).
        budget: tokens kept per sequence and KV head between tokens (None = unbounded); in
            ``continuous`` mode a step attends to them plus its own token, budget + 1 at the peak.
        mode: ``continuous`` or ``prefill`` (see the module docstring).
        seed: seeds the cache's generator (used by the ``random`` policy).
        rotate: the layer's RoPE rotation by a position shift, for re-indexing policies; None when
            the keys carry no rotation.
        history: record at least this many of the last queries' attention (the policy's own
            ``history`` when larger), so that :meth:`fork` can serve policies that rank by more.
    """

    def __init__(self, policy: Policy, budget: int | None, mode: Mode = "continuous", seed: int = 0,
                 rotate: Rotate | None = None, history: int = 0) -> None:
        whole = isinstance(budget, Integral) and not isinstance(budget, bool)
        if budget is not None and (not whole or budget < 1):
            raise ValueError(f"KV cache budget must be a whole number of tokens >= 1, got {budget!r} "
                             "(recallkit.kv.resolve_budget turns a fraction of the context into tokens)")
        if mode not in ("continuous", "prefill"):
            raise ValueError(f"unknown eviction mode {mode!r}; use continuous or prefill")
        budget = None if budget is None else int(budget)  # a NumPy integer as a Python one
        self.policy, self.budget, self.mode, self.rotate = policy, budget, mode, rotate
        self.history = max(policy.history, history)  # queries in the ``recent`` ring
        self.generator = torch.Generator().manual_seed(seed)
        self.key = self.value = None  # (B, H_kv, S, d_h), keys rotated at their key_positions
        self.positions: Tensor | None = None  # (B, H_kv, S) original positions, ascending
        self.accumulated: Tensor | None = None  # (B, H_kv, S) sum of attention received
        self.last: Tensor | None = None  # (B, H_kv, S) attention from the latest query
        self.recent: Tensor | None = None  # (B, H_kv, S, history) ring of the last queries' attention
        self.seen = 0  # tokens appended so far = original position of the next token
        self.compressed = False
        self.padded = False  # a stack of forks: slots after a row's own tokens are padding (masked)
        self.peak = 0  # most tokens held between tokens
        self.reach: int | None = None  # a sliding-window layer's: latest positions a query can read

    def __len__(self) -> int:
        return 0 if self.key is None else self.key.shape[2]

    def numel(self) -> int:
        """Numbers of inference state held per batch: the kept keys and values in reach (positions
        and statistics are bookkeeping of the policy, not model state)."""
        if self.key is None:
            return 0
        expired = self.expired()
        if expired is None:
            return self.key.numel() + self.value.numel()
        return int((~expired).sum()) * (self.key.shape[-1] + self.value.shape[-1])

    def expired(self) -> Tensor | None:
        """(B, H_kv, S) bool: held tokens out of a sliding window's ``reach`` (None without one)."""
        if self.reach is None or self.key is None:
            return None
        return self.key_positions < self.next_position - self.reach

    @property
    def needs_attention(self) -> bool:
        return True

    @property
    def stepwise(self) -> bool:
        return self.mode == "continuous" and self.policy.evicts and self.budget is not None

    @property
    def next_position(self) -> int:
        return len(self) if self.policy.reindex else self.seen

    @property
    def key_positions(self) -> Tensor:
        """Positions the attention uses: original ones, or the cache slots when re-indexing."""
        if self.policy.reindex:
            return torch.arange(len(self), device=self.key.device).expand_as(self.positions)
        return self.positions

    def append(self, key: Tensor, value: Tensor) -> KVCache:
        """Add T tokens per sequence: key, value (B, H_kv, T, d_h) at positions seen .. seen + T - 1."""
        B, H, T, _ = key.shape
        zeros = key.new_zeros(B, H, T, dtype=torch.float32)  # attention statistics: float32 at any dtype
        positions = torch.arange(self.seen, self.seen + T, device=key.device).expand(B, H, T)
        recent = key.new_zeros(B, H, T, self.history, dtype=torch.float32) if self.history else None
        if self.key is None:
            self.key, self.value, self.positions = owned(key), owned(value), positions  # not the projection's
            self.accumulated, self.last, self.recent = zeros, zeros.clone(), recent
        else:
            self.key, self.value = torch.cat([self.key, key], dim=2), torch.cat([self.value, value], dim=2)
            self.positions = torch.cat([self.positions, positions], dim=2)
            self.accumulated = torch.cat([self.accumulated, zeros], dim=2)
            self.last = torch.cat([self.last, zeros], dim=2)
            if recent is not None:
                self.recent = torch.cat([self.recent, recent], dim=2)
        self.seen += T
        return self

    def observe(self, attention: Tensor) -> KVCache:
        """Record the new queries' attention (B, H_kv, T, S), averaged over the query heads of each
        KV head, then evict if the mode says so."""
        T = attention.shape[2]
        return self.observe_summary(attention.sum(dim=2), attention[:, :, -self.tail_rows(T):], T)

    def tail_rows(self, num_queries: int) -> int:
        """How many of a block's last queries :meth:`observe_summary` needs: the ring's, and the last."""
        return min(num_queries, max(self.history, 1))

    def observe_summary(self, total: Tensor, tail: Tensor, num_queries: int) -> KVCache:
        """:meth:`observe` from what it reads of a block of ``num_queries`` queries: their attention
        summed over the queries, ``total`` (B, H_kv, S), and the last :meth:`tail_rows` queries' own,
        ``tail`` (B, H_kv, k, S); a reader that attends in chunks never holds the whole block's."""
        T = num_queries
        if total.shape[-1] != len(self) or tail.shape[-1] != len(self):
            raise ValueError(f"attention over {total.shape[-1]} keys observed by a cache holding {len(self)}")
        if self.stepwise and T != 1:
            raise ValueError(f"a continuous evicting cache reads one token at a time, got a block of {T}")
        total, tail = total.float(), tail.float()  # the statistics are float32 at any model dtype
        self.accumulated = self.accumulated + total
        self.last = owned(tail[:, :, -1])  # not all T x S of a prefill's attention
        if self.recent is not None:
            n = min(T, self.history)  # query i of the whole context sits in slot i % history
            slots = torch.arange(self.seen - n, self.seen, device=tail.device) % self.history
            self.recent[..., slots] = tail[:, :, -n:].transpose(-1, -2)
        if self.stepwise and len(self) > self.budget:
            self.evict(self.budget)
        self._drop_expired()
        self.peak = max(self.peak, len(self))
        return self

    def _drop_expired(self) -> None:
        """Drop the oldest slots while every row and head holds them out of ``reach`` (positions
        ascend, so a row's expired tokens are its first slots)."""
        expired = self.expired()
        if expired is None:
            return
        drop = int(expired.sum(dim=-1).min())
        if drop:
            B, H, S = expired.shape
            self._take(torch.arange(drop, S, device=expired.device).expand(B, H, S - drop))

    def last_queries(self, n: int) -> Tensor:
        """(B, H_kv, S, n): the attention of the last ``n`` queries (n <= ``history``), oldest first;
        zeros for queries before the first token. A ring recorded for a longer history holds older
        queries too, which a policy that ranks by its own last ``n`` must not read."""
        if n > self.history:
            raise ValueError(f"the last {n} queries asked of a cache that records {self.history}")
        queries = torch.arange(self.seen - n, self.seen, device=self.recent.device)
        return self.recent[..., queries % self.history].masked_fill(queries < 0, 0.0)

    def fork(self, policy: Policy, budget: int | None, seed: int = 0) -> KVCache:
        """This prefill-mode cache, after its context and before compressing, under another policy and
        budget: exactly what a fresh cache with them holds after reading the same context, since a
        prefill-mode cache reads the context with every token and only its statistics decide what
        :meth:`compress` keeps. So one reading of a prompt serves every policy and budget.

        The tensors are shared (every method replaces them rather than writing into them) except
        the ``recent`` ring, rebuilt for the policy's history, which must not exceed this cache's."""
        if self.mode != "prefill" or self.compressed:
            raise ValueError("only a prefill-mode cache that has not compressed yet can be forked")
        if policy.history > self.history:
            raise ValueError(f"policy {policy.name} ranks by the last {policy.history} queries, this cache "
                             f"recorded {self.history}")
        twin = KVCache(policy, budget, "prefill", seed, rotate=self.rotate)
        twin.key, twin.value, twin.positions = self.key, self.value, self.positions
        twin.accumulated, twin.last, twin.seen, twin.peak = self.accumulated, self.last, self.seen, self.peak
        twin.reach = self.reach
        if twin.history and self.key is not None:  # query i sits in slot i % history of each ring
            queries = torch.arange(max(0, self.seen - twin.history), self.seen, device=self.key.device)
            twin.recent = self.recent.new_zeros(*self.recent.shape[:3], twin.history)
            twin.recent[..., queries % twin.history] = self.recent[..., queries % self.history]
        return twin

    def compress(self) -> None:
        """End of the context: in ``prefill`` mode, evict down to the budget once."""
        over_budget = self.budget is not None and len(self) > self.budget
        if self.mode == "prefill" and not self.compressed and over_budget:
            self.evict(self.budget)
            self._drop_expired()
        self.compressed = True

    def evict(self, budget: int) -> None:
        """Keep the ``budget`` tokens per sequence and head that the policy ranks highest."""
        if not self.policy.evicts or len(self) <= budget:
            return
        self._take(self.policy.keep(self, budget))

    def _take(self, keep: Tensor) -> None:
        """Keep the slots ``keep`` (B, H_kv, n), ascending, of every tensor of the cache."""

        def take(t: Tensor) -> Tensor:  # (B, H_kv, S, ...) -> (B, H_kv, n, ...)
            index = keep.view(*keep.shape, *([1] * (t.ndim - 3))).expand(-1, -1, -1, *t.shape[3:])
            return t.gather(2, index)

        self.key, self.value, self.positions = take(self.key), take(self.value), take(self.positions)
        self.accumulated, self.last = take(self.accumulated), take(self.last)
        if self.recent is not None:
            self.recent = take(self.recent)
        if self.policy.reindex and self.rotate is not None:  # slot keep[j] moves to slot j
            self.key = self.rotate(self.key, torch.arange(keep.shape[-1], device=keep.device) - keep)
