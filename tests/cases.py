"""The test tables shared by several test files: mixer configurations, task configurations with
their oracles, and KV eviction policies with their option variants.

A new mixer, task or policy gets its rows here; the contract tests (tests/test_mixer_contract.py,
tests/test_task_contract.py, tests/test_kv_cache.py) fail until every registered key has one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import recallkit as rk
from recallkit.tasks import Batch
from tests.test_copy_lookup_tasks import copy_oracle, ngram_oracle, phonebook_oracle
from tests.test_mqar import oracle as mqar_oracle
from tests.test_set_disjointness import oracle as set_disjointness_oracle
from tests.test_tasks_2026 import compositional_oracle, forgetting_oracle, selective_copy_oracle
from tests.test_tasks_2026_more import (
    counting_oracle,
    niah_oracle,
    pair_recall_oracle,
    state_tracking_oracle,
    variable_tracking_oracle,
)

# One row per mixer configuration under test. Every registry key must appear here.
CASES: list[tuple[str, dict]] = [
    ("attention", {}),
    ("attention", {"num_heads": 4}),
    ("attention", {"num_heads": 2, "position": "rope", "rope_base": 100.0}),
    ("attention", {"num_heads": 4, "num_kv_heads": 2, "position": "rope", "rope_base": 100.0}),
    ("attention", {"num_heads": 4, "num_kv_heads": 1, "window": 5}),
    ("attention", {"num_heads": 4, "position": "alibi"}),
    ("attention", {"num_heads": 4, "position": "hard_alibi"}),
    ("attention", {"num_heads": 2, "num_kv_heads": 1, "position": "alibi", "window": 7, "short_conv": 3}),
    ("linear_attention", {"feature_map": "identity", "normalize": False, "chunk_size": 8}),
    ("linear_attention", {"feature_map": "elu", "num_heads": 2, "chunk_size": 8}),
    ("linear_attention", {"feature_map": "relu", "feature_dim": 8, "chunk_size": 5}),
    ("linear_attention", {"feature_map": "taylor", "feature_dim": 4, "num_heads": 2, "chunk_size": 8}),
    ("linear_attention", {"feature_map": "taylor", "feature_dim": 4, "normalize": True, "chunk_size": 64}),
    ("attention", {"num_heads": 2, "position": "rope", "rope_base": 100.0, "short_conv": 4}),
    ("linear_attention", {"feature_map": "taylor", "feature_dim": 4, "chunk_size": 8, "short_conv": 3}),
    ("mla", {}),
    ("mla", {"num_heads": 2, "kv_latent_dim": 6, "rope_dim": 4, "q_latent_dim": 8, "rope_base": 100.0}),
    ("mla", {"num_heads": 4, "kv_latent_dim": 4, "rope_dim": 2, "short_conv": 3}),
    ("mla", {"num_heads": 2, "rope_dim": 0}),  # NoPE, as Kimi Linear's MLA layers
    ("mamba", {"chunk_size": 5}),
    ("mamba", {"d_state": 4, "d_conv": 2, "expand": 1, "dt_rank": 3, "chunk_size": 8}),
    ("mamba", {"d_state": 8, "chunk_size": 8, "short_conv": 3}),
    ("base_conv", {"kernel_size": 3}),
    ("base_conv", {"kernel_size": "long", "max_len": 32}),
    ("base_conv", {"kernel_size": "long", "out_proj": True, "short_conv": 3}),
    ("h3", {"chunk_size": 8}),
    ("h3", {"num_heads": 2, "d_state": 4, "shift_len": 2, "chunk_size": 5, "input_scale": "zoh"}),
    ("h3", {"num_heads": 8, "short_conv": 3}),
    ("hyena", {}),
    ("hyena", {"order": 3, "filter_dim": 8, "filter_emb_dim": 5, "max_len": 64}),
    ("hyena", {"order": 1, "short_conv": 3}),
    ("retnet", {"chunk_size": 5}),
    ("retnet", {"num_heads": 2, "chunk_size": 8}),
    ("retnet", {"num_heads": 8, "chunk_size": 8, "short_conv": 3}),
    ("gla", {"chunk_size": 8}),
    ("gla", {"num_heads": 2, "expand_k": 1.0, "gate_rank": 4, "chunk_size": 5}),
    ("gla", {"num_heads": 1, "chunk_size": 16, "short_conv": 3}),
    ("mamba2", {"chunk_size": 5}),
    ("mamba2", {"d_state": 4, "head_dim": 8, "expand": 1, "d_conv": 2, "chunk_size": 8}),
    ("mamba2", {"d_state": 8, "head_dim": 4, "chunk_size": 8, "short_conv": 3}),
    ("mamba3", {"chunk_size": 5}),
    ("mamba3", {"d_state": 8, "head_dim": 8, "expand": 1, "rope_fraction": 1.0, "chunk_size": 8}),
    ("mamba3", {"d_state": 4, "head_dim": 4, "chunk_size": 64, "short_conv": 3}),
    ("deltanet", {"chunk_size": 5}),
    ("deltanet", {"num_heads": 2, "chunk_size": 8}),
    ("deltanet", {"num_heads": 1, "chunk_size": 8, "short_conv": 3}),
    ("gated_deltanet", {"chunk_size": 5}),
    ("gated_deltanet", {"num_heads": 2, "chunk_size": 8}),
    ("gated_deltanet", {"num_heads": 8, "chunk_size": 16, "short_conv": 3}),
    ("kda", {"chunk_size": 5}),
    ("kda", {"num_heads": 2, "gate_rank": 3, "chunk_size": 8}),
    ("kda", {"num_heads": 8, "chunk_size": 16, "short_conv": 3}),
    ("gsa", {"chunk_size": 5}),
    ("gsa", {"num_heads": 2, "num_slots": 3, "chunk_size": 8}),
    ("gsa", {"num_heads": 1, "num_slots": 16, "gate_temperature": 2.0, "chunk_size": 16, "short_conv": 3}),
    ("log_linear", {"chunk_size": 5}),
    ("log_linear", {"d_state": 4, "head_dim": 8, "expand": 1, "d_conv": 2, "num_levels": 3, "chunk_size": 8}),
    ("log_linear", {"d_state": 8, "head_dim": 4, "chunk_size": 3, "short_conv": 3}),
    ("gated_deltaproduct", {"chunk_size": 5}),
    ("gated_deltaproduct", {"num_heads": 2, "num_householder": 3, "allow_neg_eigval": True,
                            "chunk_size": 8}),
    ("gated_deltaproduct", {"num_heads": 8, "num_householder": 1, "chunk_size": 16, "short_conv": 3}),
    ("fox", {"chunk_size": 5}),
    ("fox", {"num_heads": 4, "chunk_size": 8}),
    ("fox", {"num_heads": 2, "pro": True, "chunk_size": 3, "short_conv": 3}),
    ("longhorn", {"chunk_size": 5}),
    ("longhorn", {"d_state": 4, "d_conv": 2, "expand": 1, "dt_rank": 3, "chunk_size": 8}),
    ("longhorn", {"d_state": 8, "chunk_size": 64, "short_conv": 3}),
    ("rwkv6", {"chunk_size": 5}),
    ("rwkv6", {"num_heads": 2, "mix_rank": 3, "decay_rank": 4, "chunk_size": 8}),
    ("rwkv6", {"num_heads": 1, "chunk_size": 16, "short_conv": 3}),
    ("hgrn2", {"chunk_size": 5}),
    ("hgrn2", {"expand_ratio": 4, "lower_bound": 0.5, "chunk_size": 8}),
    ("hgrn2", {"expand_ratio": 8, "chunk_size": 16, "short_conv": 3}),
    ("rwkv7", {"chunk_size": 5}),
    ("rwkv7", {"num_heads": 1, "decay_rank": 4, "a_rank": 3, "gate_rank": 5, "chunk_size": 8}),
    ("rwkv7", {"num_heads": 2, "chunk_size": 16, "short_conv": 3}),
    ("pla", {}),
    ("pla", {"feature_map": "elu", "num_heads": 2, "chunk_size": 5}),
    ("pla", {"feature_map": "identity", "normalize": False, "feature_dim": 4, "chunk_size": 8,
             "short_conv": 3}),
]


def reversal_oracle(batch: Batch) -> torch.Tensor:
    """The object (or subject, after r^-1) of a fact stated earlier in the sequence, else of the fixed
    fact table of ``num_facts=20, facts_seed=0``."""
    objects, _ = rk.make_task("reversal", vocab_size=48, seq_len=33, num_facts=20).facts()
    known = ({(5 + i, 3): int(o) for i, o in enumerate(objects)}
             | {(int(o), 4): 5 + i for i, o in enumerate(objects)})
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        stated = dict(known)
        for t in range(1, len(row) - 1):
            if row[t] in (3, 4):
                predictions[i, t] = stated.get((row[t - 1], row[t]), -1)
                if row[t] == 3 and row[t + 1] != 0:  # a stated fact, both ways
                    stated[(row[t - 1], 3)], stated[(row[t + 1], 4)] = row[t + 1], row[t - 1]
    return predictions


# Every registered task except the read_twice transform (which wraps these): a few small configs and
# an oracle that reads each scored answer from the inputs alone (-1 where it predicts nothing).
TASK_CASES: dict[str, tuple[Callable[[Batch], torch.Tensor], list[dict]]] = {
    "mqar": (mqar_oracle, [
        {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 4},
        {"vocab_size": 64, "seq_len": 48, "num_kv_pairs": [1, 3, 6], "random_fillers": True},
        {"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 3, "num_passes": 2},
    ]),
    "set_disjointness": (set_disjointness_oracle, [
        {"vocab_size": 48, "seq_len": 28, "set_sizes": [(3, 12), (12, 3), (5, 5)]},
    ]),
    "copy": (copy_oracle, [
        {"vocab_size": 16, "seq_len": 23, "alphabet_size": 6, "min_len": 1, "max_len": 10},
        {"vocab_size": 16, "seq_len": 40, "alphabet_size": 3, "min_len": 2, "max_len": 5,
         "examples_per_sequence": 3},
    ]),
    "ngram_lookup": (ngram_oracle, [
        {"vocab_size": 32, "seq_len": 38, "min_len": 8, "max_len": 30, "key_position": "suffix"},
        {"vocab_size": 32, "seq_len": 38, "min_len": 8, "max_len": 30, "key_position": "prefix"},
    ]),
    "phonebook": (lambda batch: phonebook_oracle(batch, 2), [
        {"vocab_size": 48, "seq_len": 80, "min_entries": 3, "max_entries": 6},
    ]),
    "reversal": (reversal_oracle, [
        {"vocab_size": 48, "seq_len": 8, "num_facts": 20, "mode": "in_context"},
        {"vocab_size": 48, "seq_len": 17, "num_facts": 20, "mode": "train", "statements": 4},
    ]),
    "forgetting_mqar": (forgetting_oracle, [
        {"vocab_size": 64, "seq_len": 48, "num_kv_pairs": 6, "num_updates": 3},
        {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 6, "num_updates": 6, "max_overwrites": 3},
    ]),
    "compositional_mqar": (compositional_oracle, [
        {"vocab_size": 48, "seq_len": 24, "num_kv_pairs": 4},
        {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 9, "power_a": 1.0},
    ]),
    "selective_copy": (selective_copy_oracle, [
        {"vocab_size": 12, "seq_len": 50, "min_len": 1, "max_len": 10, "noise_per_token": 3},
        {"vocab_size": 4, "seq_len": 48, "min_len": 8, "max_len": 8, "noise_per_token": 4},
    ]),
    "state_tracking": (state_tracking_oracle, [
        {"vocab_size": 3, "seq_len": 24, "group": "parity", "min_len": 1, "max_len": 24},
        {"vocab_size": 128, "seq_len": 20, "group": "s5", "min_len": 4, "max_len": 16},
    ]),
    "variable_tracking": (variable_tracking_oracle, [
        {"vocab_size": 64, "seq_len": 64, "num_chains": 2, "min_hops": 1, "max_hops": 4, "min_len": 4,
         "max_len": 24},
        {"vocab_size": 48, "seq_len": 40, "num_chains": 4, "min_hops": 2, "max_hops": 2, "min_len": 0,
         "max_len": 2},
    ]),
    "niah": (lambda batch: niah_oracle(batch, 2), [
        {"vocab_size": 32, "seq_len": 48, "key_len": 2, "num_distractors": 3, "min_len": 0, "max_len": 30},
        {"vocab_size": 40, "seq_len": 60, "key_len": 2, "num_queries": 2, "num_values": 2,
         "num_distractors": 4, "min_len": 8, "max_len": 24, "depth": 0.75},
    ]),
    "noisy_recall": (lambda batch: pair_recall_oracle(batch, 16), [
        {"vocab_size": 48, "seq_len": 64, "num_kv_pairs": 8, "frac_noise": [0.0, 0.2, 0.5],
         "noise_vocab_size": 16},
        {"vocab_size": 64, "seq_len": 80, "num_kv_pairs": 4, "frac_noise": 0.8, "noise_vocab_size": 16},
    ]),
    "fuzzy_recall": (lambda batch: pair_recall_oracle(batch, 2, 2, 2), [
        {"vocab_size": 13, "seq_len": 64, "num_kv_pairs": 8, "key_len": 2, "value_len": 2,
         "noise_vocab_size": 2},
        {"vocab_size": 24, "seq_len": 64, "num_kv_pairs": 6, "key_len": 2, "value_len": 2,
         "frac_noise": [0.0, 0.25], "noise_vocab_size": 2},
    ]),
    "counting": (lambda batch: counting_oracle(batch, 3), [
        {"vocab_size": 32, "seq_len": 52, "top_k": 3, "rare_count": 2, "max_count": 8, "min_len": 24,
         "max_len": 48},
        {"vocab_size": 32, "seq_len": 36, "top_k": 3, "rare_count": 1, "max_count": 5, "min_len": 12,
         "max_len": 32},
    ]),
}

# Every registered policy, and the option variants whose code paths the defaults miss: sinks with
# re-indexed positions, h2o without a recent window, snapkv with several windows and kernels.
POLICY_CASES: list[str | dict] = sorted(rk.POLICIES) + [
    {"name": "sinks", "num_sinks": 1, "reindex_positions": True},
    {"name": "h2o", "recent_ratio": 0.0},
    {"name": "snapkv", "window": 1, "kernel_size": 1},
    {"name": "snapkv", "window": 4, "kernel_size": 3},
]


def policy_id(policy: str | dict) -> str:
    """A readable pytest id of a policy case, e.g. ``snapkv-window=4-kernel_size=3``."""
    if isinstance(policy, str):
        return policy
    return "-".join([policy["name"], *(f"{k}={v}" for k, v in policy.items() if k != "name")])
