"""KV policies at their boundaries (found by mutation testing): H2O's recent window is int(recent_ratio *
budget) tokens at an odd budget (H2O's code: ``int(recent_ratio * cache_size)``), SnapKV's even kernel_size
pools kernel_size + 1 wide as its docstring says, a window layer whose heads disagree, and
Scissorhands' strict "less than the uniform share"."""

from __future__ import annotations

import torch

from recallkit.inference import KVCache, make_policy


def test_h2o_recent_window_is_int_of_ratio_times_budget_at_an_odd_budget():
    # budget 7, recent_ratio 0.5: int(3.5) = 3 recent tokens protected (round() would give 4)
    policy = make_policy({"name": "h2o", "recent_ratio": 0.5})
    S, budget = 10, 7
    cache = KVCache(policy, budget, mode="prefill")
    cache.append(torch.randn(1, 1, S, 4), torch.randn(1, 1, S, 4))
    # accumulated attention: the old tokens 0-5 are heavy, the recent 6-9 drew nothing
    cache.accumulated = torch.tensor([[[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 0.0, 0.0, 0.0, 0.0]]])
    cache.compress()
    # 3 recent (7, 8, 9) + the 4 heaviest of the rest (0-3): token 6 is not in the window
    assert cache.positions.tolist() == [[[0, 1, 2, 3, 7, 8, 9]]]


def test_snapkv_even_kernel_pools_one_wider_and_keeps_the_prefix_length():
    policy = make_policy({"name": "snapkv", "window": 2, "kernel_size": 2})  # pools 3 wide
    S, budget = 8, 4
    cache = KVCache(policy, budget, mode="prefill")
    cache.append(torch.randn(1, 1, S, 4), torch.randn(1, 1, S, 4))
    prefix = [0.0, 0.0, 0.0, 1.0, 0.0, 0.1]  # pooled 3 wide: [0, 0, 1, 1, 1, .1]
    cache.recent = torch.zeros(1, 1, S, 2)
    cache.recent[..., 0] = torch.tensor([prefix + [5.0, 5.0]])
    priority = policy.priority(cache, budget)
    assert priority.shape == (1, 1, S)
    torch.testing.assert_close(priority[..., :6], torch.tensor([[[0.0, 0.0, 1.0, 1.0, 1.0, 0.1]]]))
    cache.compress()
    # ties between pooled 1.0s go to the more recent: 3 and 4, then the window 6, 7
    assert cache.positions.tolist() == [[[3, 4, 6, 7]]]


def test_a_window_layer_drops_only_what_every_head_holds_out_of_reach():
    """Heads that kept different tokens: head 0 still holds positions 0 and 1, out of a 4-token reach,
    head 1 only tokens in reach. The cache is dense, so it drops the expired slots only as far as every
    head holds them (here none): head 1's tokens 2 and 3 are in reach and must stay."""
    cache = KVCache(make_policy("h2o"), 100, mode="prefill")
    cache.append(torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4))
    cache._take(torch.tensor([[[0, 1, 4, 5], [2, 3, 4, 5]]]))  # per-head choices of an earlier eviction
    cache.reach = 4  # a query at position 6 reads positions 2..5
    cache.observe(torch.full((1, 2, 1, 4), 0.25))
    assert cache.positions.tolist() == [[[0, 1, 4, 5], [2, 3, 4, 5]]]
    assert cache.numel() == 6 * (4 + 4)  # head 0's positions 0 and 1 are held but not counted


def test_scissorhands_counts_only_attention_strictly_below_the_uniform_share():
    """W = 2, S = 4 (share 1/4, exact in binary): token 0 draws exactly 1/4 from both queries, so it is
    never unimportant; token 3, attended once (1/4), is not either. A budget of 3 keeps 0 and 3, then
    the more recent of the tied 1 and 2. Counting ``<=`` the share would drop token 0 instead."""
    policy = make_policy({"name": "scissorhands", "history_window": 2, "recent_ratio": 0.0})
    cache = KVCache(policy, 3, mode="prefill")
    cache.append(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4))
    attention = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                              [0.5, 0.5, 0.0, 0.0],
                              [0.25, 0.2, 0.55, 0.0],
                              [0.25, 0.3, 0.2, 0.25]])
    cache.observe(attention[None, None])
    cache.compress()
    assert cache.positions.tolist() == [[[0, 2, 3]]]


def test_a_policy_history_or_a_budget_the_policy_cannot_spend_is_refused_at_config_time():
    """A history of 10^6 queries asked for gigabytes mid-run; a budget on ``full`` was reported for a
    cache that held everything."""
    import pytest
    from pydantic import ValidationError

    from recallkit.config import EvalPolicy
    from recallkit.kv.policies import MAX_HISTORY

    for policy in ({"name": "scissorhands", "history_window": MAX_HISTORY + 1},
                   {"name": "snapkv", "window": MAX_HISTORY + 1}):
        with pytest.raises(ValidationError, match="less than or equal to 4096"):
            EvalPolicy(policy=policy, budget=0.5)
    for budget in ({"budget": 1}, {"budget": 0.5}, {"compression_ratio": 0.5}):
        with pytest.raises(ValidationError, match="full never evicts"):
            EvalPolicy(policy="full", **budget)
    assert EvalPolicy(policy="full").budget == EvalPolicy(policy="full", budget=1.0).budget == 1.0
