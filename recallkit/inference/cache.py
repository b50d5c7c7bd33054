"""An evicting KV cache for one attention layer (DESIGN.md section 8).

The cache holds, per sequence and KV head, the kept tokens' keys (before RoPE, so a policy may
re-index positions), values, original positions and the statistics policies rank tokens by:
accumulated attention (H2O), the last query's attention (TOVA), the last ``policy.history``
queries' attention (SnapKV, Scissorhands). Tokens stay sorted by position. Every sequence and head
keeps the same number of tokens, so the tensors stay dense.

Modes: ``continuous`` evicts after every step once more than ``budget`` tokens are held (between
steps the cache never holds more than ``budget``); ``prefill`` reads the context with the full
cache, compresses once to ``budget`` when :meth:`KVCache.compress` is called at the end of the
context, and appends the decoded tokens after it without evicting (as kvpress does).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from recallkit.inference.policies import Policy

Mode = Literal["continuous", "prefill"]


class KVCache:
    """Keys, values, positions and attention statistics of one attention layer.

    Args:
        policy: which tokens to keep when over budget (see :mod:`recallkit.inference.policies`).
        budget: tokens kept per sequence and KV head (None = unbounded).
        mode: ``continuous`` or ``prefill`` (see the module docstring).
        seed: seeds the cache's generator (used by the ``random`` policy).
    """

    def __init__(self, policy: Policy, budget: int | None, mode: Mode = "continuous", seed: int = 0) -> None:
        if budget is not None and budget < 1:
            raise ValueError(f"KV cache budget must be >= 1 token, got {budget}")
        if mode not in ("continuous", "prefill"):
            raise ValueError(f"unknown eviction mode {mode!r}; use continuous or prefill")
        self.policy, self.budget, self.mode = policy, budget, mode
        self.generator = torch.Generator().manual_seed(seed)
        self.key = self.value = None  # (B, H_kv, S, d_h), keys before RoPE
        self.positions: Tensor | None = None  # (B, H_kv, S) original positions, ascending
        self.accumulated: Tensor | None = None  # (B, H_kv, S) sum of attention received
        self.last: Tensor | None = None  # (B, H_kv, S) attention from the latest query
        self.recent: Tensor | None = None  # (B, H_kv, S, history) attention of the last queries
        self.seen = 0  # tokens appended so far = position of the next token
        self.compressed = False
        self.peak = 0  # most tokens held between steps

    def __len__(self) -> int:
        return 0 if self.key is None else self.key.shape[2]

    def numel(self) -> int:
        """Numbers of inference state held per batch: the kept keys and values (positions and
        statistics are bookkeeping of the policy, not model state)."""
        return 0 if self.key is None else self.key.numel() + self.value.numel()

    def append(self, key: Tensor, value: Tensor) -> None:
        """Add one token per sequence: key, value (B, H_kv, d_h) at position ``seen``."""
        B, H, _ = key.shape
        zeros = key.new_zeros(B, H, 1)
        position = torch.full((B, H, 1), self.seen, dtype=torch.long, device=key.device)
        if self.key is None:
            self.key, self.value, self.positions = key[:, :, None], value[:, :, None], position
            self.accumulated, self.last = zeros, zeros.clone()
            if self.policy.history:
                self.recent = key.new_zeros(B, H, 1, self.policy.history)
        else:
            self.key = torch.cat([self.key, key[:, :, None]], dim=2)
            self.value = torch.cat([self.value, value[:, :, None]], dim=2)
            self.positions = torch.cat([self.positions, position], dim=2)
            self.accumulated = torch.cat([self.accumulated, zeros], dim=2)
            self.last = torch.cat([self.last, zeros], dim=2)
            if self.recent is not None:
                self.recent = torch.cat([self.recent, key.new_zeros(B, H, 1, self.policy.history)], dim=2)
        self.seen += 1

    def attention_positions(self) -> tuple[Tensor, Tensor]:
        """Positions the attention uses: (query (B, H_kv, 1), keys (B, H_kv, S)). Original
        positions, or the slot inside the cache when the policy re-indexes (StreamingLLM)."""
        if self.policy.reindex:
            keys = torch.arange(len(self), device=self.key.device).expand_as(self.positions)
        else:
            keys = self.positions
        return keys[:, :, -1:], keys

    def observe(self, attention: Tensor) -> None:
        """Record the latest query's attention (B, H_kv, S), averaged over the query heads of each
        KV head, then evict if the mode says so."""
        self.accumulated = self.accumulated + attention
        self.last = attention
        if self.recent is not None:
            self.recent[..., (self.seen - 1) % self.policy.history] = attention
        if self.mode == "continuous" and self.budget is not None and len(self) > self.budget:
            self.evict(self.budget)
        self.peak = max(self.peak, len(self))

    def compress(self) -> None:
        """End of the context: in ``prefill`` mode, evict down to the budget once."""
        if self.mode == "prefill" and not self.compressed and self.budget is not None and len(self) > self.budget:
            self.evict(self.budget)
        self.compressed = True

    def evict(self, budget: int) -> None:
        """Keep the ``budget`` tokens per sequence and head that the policy ranks highest."""
        if not self.policy.evicts or len(self) <= budget:
            return
        keep = self.policy.keep(self, budget)  # (B, H_kv, budget), ascending slots

        def take(t: Tensor) -> Tensor:  # (B, H_kv, S, ...) -> (B, H_kv, budget, ...)
            index = keep.view(*keep.shape, *([1] * (t.ndim - 3))).expand(-1, -1, -1, *t.shape[3:])
            return t.gather(2, index)

        self.key, self.value, self.positions = take(self.key), take(self.value), take(self.positions)
        self.accumulated, self.last = take(self.accumulated), take(self.last)
        if self.recent is not None:
            self.recent = take(self.recent)
