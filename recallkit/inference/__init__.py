"""Inference memory: evaluation under KV-cache eviction and prefix state caching (docs/design.md
section 8). The caches, policies and budgets themselves live in :mod:`recallkit.kv` (below the
models) and are re-exported here."""

from recallkit.inference.decode import evaluate_with_policy, evicting_state
from recallkit.inference.kv_memory import (
    default_kv_numbers_per_token,
    kv_bytes_per_token,
    kv_numbers_per_token,
)
from recallkit.inference.prefix_cache import (
    load_prefix_state,
    model_fingerprint,
    prefix_state_bytes,
    save_prefix_state,
)
from recallkit.kv import POLICIES, KVCache, Policy, make_policy, resolve_budget

__all__ = [
    "POLICIES",
    "KVCache",
    "Policy",
    "default_kv_numbers_per_token",
    "evaluate_with_policy",
    "evicting_state",
    "kv_bytes_per_token",
    "kv_numbers_per_token",
    "load_prefix_state",
    "make_policy",
    "model_fingerprint",
    "prefix_state_bytes",
    "resolve_budget",
    "save_prefix_state",
]
