"""KV-cache eviction policies (registry ``POLICIES``), one small class each.

A policy ranks the tokens of a :class:`~recallkit.inference.cache.KVCache` per sequence and KV head
and the cache keeps the ``budget`` highest-ranked (``keep``); protected tokens (attention sinks,
a recent window) rank above everything else. Attention statistics are averaged over the query
heads that share a KV head.

Ties are broken deterministically, the same way on every sequence and head (``Policy.tiebreak``):
between equal scores the more recent token wins, and attention sinks win over every other
protected token, the earliest sink first. So when the protected tokens outnumber the budget (e.g.
``sinks`` at a budget below ``num_sinks``) the cache keeps the sinks first, then the most recent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from recallkit.base_config import StrictModel

if TYPE_CHECKING:
    from recallkit.kv.cache import KVCache

PROTECTED = float("inf")
MAX_HISTORY = 4096
"""The most queries a policy's history holds (SnapKV's window, Scissorhands' history_window): the
cache keeps (context tokens x history) attention numbers, which at 10^6 asked for gigabytes."""


def most_recent(cache: KVCache, count: int) -> Tensor:
    """(B, H_kv, S) bool: the ``count`` most recent tokens (the cache is sorted by position)."""
    recent = torch.zeros_like(cache.positions, dtype=torch.bool)
    if count > 0:
        recent[..., -count:] = True
    return recent


def sinks(cache: KVCache, count: int) -> Tensor:
    """(B, H_kv, S) bool: the first ``count`` tokens of the sequence, if still held."""
    return cache.positions < count


def sinks_first(cache: KVCache, count: int) -> Tensor:
    """(B, H_kv, S) tie-break key: the first ``count`` tokens above every other, the earliest first,
    then the others by recency."""
    return torch.where(sinks(cache, count), cache.seen + count - cache.positions, cache.positions)


class Policy(StrictModel):
    """Base class: subclasses set ``name`` and implement ``priority``."""

    name: str
    evicts: ClassVar[bool] = True
    reindex: ClassVar[bool] = False
    history: ClassVar[int] = 0

    def priority(self, cache: KVCache, budget: int) -> Tensor:  # pragma: no cover - abstract
        """(B, H_kv, S) scores: higher is kept first; ``PROTECTED`` is always kept."""
        raise NotImplementedError

    def tiebreak(self, cache: KVCache) -> Tensor:
        """(B, H_kv, S) secondary key between equal priorities (higher is kept first): recency."""
        return cache.positions

    def budget_or_whole(self, budget: Any) -> Any:
        """``budget`` as given; when None, 1.0 (the whole context) for a policy that never evicts
        (``full``), which needs none, and None for the others (their callers ask for one).

        Raises:
            ValueError: a policy that never evicts given a budget other than the whole context: that
                budget would be reported for a cache that holds everything.
        """
        if self.evicts:
            return budget
        if budget is not None and not (isinstance(budget, float) and budget == 1.0):  # 1 alone: one token
            raise ValueError(f"{self.name} never evicts: its budget is the whole context (1.0, or none); "
                             f"{budget!r} would be reported for a cache that holds everything")
        return 1.0 if budget is None else budget

    def check_budget(self, budget: int) -> None:
        """Refuse, with a one-line ValueError, a token budget the policy cannot spend as it is meant
        to (``EvalPolicy`` calls it on token budgets)."""

    def keep(self, cache: KVCache, budget: int) -> Tensor:
        """(B, H_kv, budget) slots to keep, ascending (so the cache stays sorted by position): the
        ``budget`` highest priorities, ties broken by :meth:`tiebreak` (stable sorts, not ``topk``,
        whose choice among equal values is arbitrary and may differ per head). Tokens out of a
        sliding window's reach (:meth:`KVCache.expired`) rank below all others, sinks included."""
        priority = self.priority(cache, budget)
        if (expired := cache.expired()) is not None:
            priority = priority.masked_fill(expired, float("-inf"))
        order = self.tiebreak(cache).argsort(dim=-1, descending=True, stable=True)
        order = order.gather(-1, priority.gather(-1, order).argsort(dim=-1, descending=True, stable=True))
        return order[..., :budget].sort(dim=-1).values


class Full(Policy):
    """No eviction: the whole KV cache (the budget is ignored)."""

    name: Literal["full"] = "full"
    evicts: ClassVar[bool] = False


class Window(Policy):
    """The ``budget`` most recent tokens (a rolling sliding-window cache)."""

    name: Literal["window"] = "window"

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        return cache.positions.float()


class Sinks(Policy):
    """StreamingLLM (Xiao et al. 2023, arXiv 2309.17453): the first ``num_sinks`` tokens (attention
    sinks) plus the most recent ones. ``reindex_positions`` gives the kept tokens the positions of
    their cache slots, as StreamingLLM does for RoPE models; otherwise they keep their original ones.
    At a budget of ``num_sinks`` or less it keeps the first ``budget`` tokens (sinks first, earliest
    first, the same on every head) and no recent one."""

    name: Literal["sinks"] = "sinks"
    num_sinks: int = Field(default=4, ge=0)
    reindex_positions: bool = False

    @property
    def reindex(self) -> bool:  # type: ignore[override]
        return self.reindex_positions

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        return cache.positions.float().masked_fill(sinks(cache, self.num_sinks), PROTECTED)

    def tiebreak(self, cache: KVCache) -> Tensor:
        return sinks_first(cache, self.num_sinks)


class H2O(Policy):
    """H2O (Zhang et al. 2023, arXiv 2306.14048): heavy hitters by accumulated attention, per head,
    plus a recent window of ``recent_ratio * budget`` tokens."""

    name: Literal["h2o"] = "h2o"
    recent_ratio: float = Field(default=0.5, ge=0, le=1)

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        recent = most_recent(cache, int(self.recent_ratio * budget))
        return cache.accumulated.masked_fill(recent, PROTECTED)


class H2OSinks(Policy):
    """"StreamingH2O": ``num_sinks`` attention sinks + heavy hitters + a recent window of
    ``int(recent_ratio * budget)`` tokens.

    Only ``budget - num_sinks - int(recent_ratio * budget)`` slots (:meth:`heavy_hitter_slots`) go
    to heavy hitters; with the defaults (4 sinks, half the budget recent) every budget up to 8
    tokens leaves none. There the policy is sinks + recent, deterministically: the sinks first
    (earliest first), then the most recent, the same tokens on every head. A token budget that
    leaves no heavy-hitter slot is refused when a config (``EvalPolicy``) is built
    (:meth:`check_budget`); a fractional one is only known in tokens at evaluation time and is
    evaluated as sinks + recent there."""

    name: Literal["h2o_sinks"] = "h2o_sinks"
    num_sinks: int = Field(default=4, ge=0)
    recent_ratio: float = Field(default=0.5, ge=0, le=1)

    def heavy_hitter_slots(self, budget: int) -> int:
        """Slots left to heavy hitters at ``budget`` tokens (<= 0: none, sinks + recent fill it)."""
        return budget - self.num_sinks - int(self.recent_ratio * budget)

    def check_budget(self, budget: int) -> None:
        if self.heavy_hitter_slots(budget) < 1:
            raise ValueError(
                f"h2o_sinks at a budget of {budget} tokens leaves no heavy-hitter slot ({self.num_sinks} "
                f"sinks + {int(self.recent_ratio * budget)} recent, recent_ratio={self.recent_ratio}): it "
                f"would be sinks + recent; give a larger budget, fewer num_sinks or a smaller recent_ratio, "
                f"or use the sinks policy")

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        protected = most_recent(cache, int(self.recent_ratio * budget)) | sinks(cache, self.num_sinks)
        return cache.accumulated.masked_fill(protected, PROTECTED)

    def tiebreak(self, cache: KVCache) -> Tensor:
        return sinks_first(cache, self.num_sinks)


class TOVA(Policy):
    """TOVA (Oren et al. 2024, arXiv 2401.06104): drop the tokens the current query attends to
    least, its attention averaged over all heads of the layer (every head keeps the same tokens)."""

    name: Literal["tova"] = "tova"

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        return cache.last.mean(dim=1, keepdim=True).expand_as(cache.last)


class SnapKV(Policy):
    """SnapKV (Li et al. 2024, arXiv 2404.14469): the attention the last ``window`` queries pay to
    each token before the observation window (the prefix), summed and max-pooled over
    ``kernel_size`` neighbours within the prefix (keeps clusters), ranks the prefix; the
    observation window itself (the last ``window`` tokens) is always kept. As in SnapKV's code
    (``attn_weights[..., :-window].sum(-2)``, pooled, top-k, then the window appended), the
    window's own votes never pool into the prefix, so a prefix token is not kept for a window
    neighbour's votes. An even ``kernel_size`` pools ``kernel_size + 1`` wide (odd, so the pooled row
    keeps the prefix's length). At a budget of ``window`` tokens or fewer no prefix token is kept and
    the policy is the ``window`` policy: refused as a token budget when a config (``EvalPolicy``) is
    built (SnapKV's code assumes a capacity above its window); a fractional budget that resolves to
    so few tokens is evaluated as that window. Meant for ``prefill`` mode."""

    name: Literal["snapkv"] = "snapkv"
    window: int = Field(default=8, gt=0, le=MAX_HISTORY)
    kernel_size: int = Field(default=7, gt=0, le=MAX_HISTORY)

    @property
    def history(self) -> int:  # type: ignore[override]
        return self.window

    def check_budget(self, budget: int) -> None:
        if budget <= self.window:
            raise ValueError(
                f"snapkv at a budget of {budget} tokens keeps no token before its {self.window}-token "
                f"observation window: it would be the window policy; give a budget above window or a "
                f"smaller window")

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        votes = cache.last_queries(self.window).sum(dim=-1)  # (B, H_kv, S): the observation window's
        B, H, S = votes.shape
        P = max(0, S - self.window)  # the prefix: tokens before the observation window
        priority = torch.full_like(votes, PROTECTED)
        if P:
            k = self.kernel_size | 1  # odd, so the pooled row keeps length P
            prefix = votes[..., :P].reshape(B * H, 1, P)
            priority[..., :P] = F.max_pool1d(prefix, k, stride=1, padding=k // 2).reshape(B, H, P)
        return priority


KNORM_BINS_PER_OCTAVE = 2**12
"""KNorm compares norms on a log scale in bins of 2^(1/4096) (1.7e-4 relative): norms equal up to
rounding are ties, which recency breaks."""


class KNorm(Policy):
    """Keep the tokens with the smallest key L2 norm (Devoto et al. 2024, arXiv 2406.11430: low-norm
    keys draw high attention). The same token at two positions has one key norm (RoPE is a rotation),
    but the cache holds rotated keys, whose float32 norms differ in the last bits, and so by a batch's
    GEMM blocking: norms are compared in bins of 1.7e-4 (``KNORM_BINS_PER_OCTAVE``), so that such a tie
    goes to the more recent token on every sequence, in any batch."""

    name: Literal["knorm"] = "knorm"

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        norm = cache.key.float().norm(dim=-1)  # (B, H_kv, S)
        return -(norm.log2() * KNORM_BINS_PER_OCTAVE).round()  # a zero key: +inf, kept first


class Random(Policy):
    """Keep a uniformly random subset (the cache's seeded generator): the floor any policy must beat.
    One generator serves the whole batch, so the subset a sequence gets depends on the batch it is in
    (its row and the batch size); the distribution, and so the expected accuracy, does not."""

    name: Literal["random"] = "random"

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        return torch.rand(cache.positions.shape, generator=cache.generator).to(cache.positions.device)


class Scissorhands(Policy):
    """Scissorhands (Liu et al. 2023, arXiv 2305.17118), persistence of importance: a token that drew
    less than the uniform share 1/S of attention at many of the last ``history_window`` steps is
    dropped first; the ``recent_ratio * budget`` most recent tokens are kept. Two simplifications of
    the paper's buffered eviction: in ``continuous`` mode it drops one token per step as the budget
    is exceeded (not m tokens at once when a buffer fills), and "uniform share" is 1/S for the S
    tokens the cache holds now."""

    name: Literal["scissorhands"] = "scissorhands"
    history_window: int = Field(default=16, gt=0, le=MAX_HISTORY)
    recent_ratio: float = Field(default=0.25, ge=0, le=1)

    @property
    def history(self) -> int:  # type: ignore[override]
        return self.history_window

    def priority(self, cache: KVCache, budget: int) -> Tensor:
        W, S = self.history_window, len(cache)
        low = (cache.last_queries(W) < 1.0 / S).sum(dim=-1)  # (B, H_kv, S), counts unobserved columns too
        observed = (cache.seen - cache.positions).clamp(max=W)  # steps each token has been attended
        unimportant = (low - (W - observed)).float()
        return (-unimportant).masked_fill(most_recent(cache, int(self.recent_ratio * budget)), PROTECTED)


POLICIES: dict[str, type[Policy]] = {
    cls.model_fields["name"].default: cls
    for cls in (Full, Window, Sinks, H2O, H2OSinks, TOVA, SnapKV, KNorm, Random, Scissorhands)
}


def make_policy(policy: str | dict[str, Any] | Policy) -> Policy:
    """A policy from its registry key, a ``{"name": key, **options}`` dict, or an instance."""
    if isinstance(policy, Policy):
        return policy
    if not isinstance(policy, str | dict):
        raise ValueError(f"an eviction policy is a name, a {{'name': key, ...}} dict or a Policy; "
                         f"got {policy!r}")
    spec = {"name": policy} if isinstance(policy, str) else dict(policy)
    key = spec.get("name")
    if key not in POLICIES:
        raise ValueError(f"unknown eviction policy {key!r}; known: {', '.join(POLICIES)}")
    return POLICIES[key](**spec)
