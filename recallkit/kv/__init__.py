"""KV caches below the models: the layer cache protocol, eviction policies, the evicting cache and
budgets. Mixers and pretrained-model adapters build on it; it imports no model code."""

from recallkit.kv.budget import Budget, CompressionRatio, budget_from_compression_ratio, resolve_budget
from recallkit.kv.cache import KVCache, Mode
from recallkit.kv.policies import POLICIES, Policy, make_policy
from recallkit.kv.protocol import CacheFactory, KVState, LayerCache, Rotate

__all__ = [
    "POLICIES", "Budget", "CacheFactory", "CompressionRatio", "KVCache", "KVState", "LayerCache", "Mode",
    "Policy", "Rotate", "budget_from_compression_ratio", "make_policy", "resolve_budget",
]
