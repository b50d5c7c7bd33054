"""Inference memory: KV-cache eviction policies and prefix state caching (DESIGN.md section 8)."""

from recallkit.inference.cache import KVCache
from recallkit.inference.decode import evaluate_with_policy, evicting_state, resolve_budget
from recallkit.inference.kv_memory import (
    default_kv_numbers_per_token,
    kv_bytes_per_token,
    kv_numbers_per_token,
)
from recallkit.inference.policies import POLICIES, Policy, make_policy
from recallkit.inference.prefix_cache import (
    load_prefix_state,
    model_fingerprint,
    prefix_state_bytes,
    save_prefix_state,
)

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
