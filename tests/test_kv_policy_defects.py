"""KV-eviction defects of issue 22 (items 11-14), each against a reference written from the papers'
definitions (SnapKV, StreamingLLM / H2O, kvpress's budget rule, a sliding window of b + 1)."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import recallkit as rk
from recallkit.config import EvalPolicy, PretrainedRunConfig
from recallkit.inference import KVCache, evaluate_with_policy, evicting_state, make_policy, resolve_budget
from recallkit.sweep import Store, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def _filled_cache(policy, budget: int, S: int, B: int = 1, H: int = 2, mode: str = "prefill") -> KVCache:
    """A cache holding S tokens (random keys), nothing evicted yet."""
    cache = KVCache(make_policy(policy), budget, mode=mode)
    g = torch.Generator().manual_seed(0)
    cache.append(torch.randn(B, H, S, 4, generator=g), torch.randn(B, H, S, 4, generator=g))
    return cache


# --- 11. SnapKV pools the prefix votes only, then appends the observation window ------------------------

def _snapkv_cache(votes: torch.Tensor, window: int, kernel: int, budget: int) -> KVCache:
    """A prefill SnapKV cache whose observation queries cast ``votes`` (B, H, S) in total."""
    B, H, S = votes.shape
    cache = _filled_cache({"name": "snapkv", "window": window, "kernel_size": kernel}, budget, S, B, H)
    cache.recent = torch.zeros(B, H, S, window)
    cache.recent[..., 0] = votes  # the policy ranks by the votes summed over the window's queries
    return cache


def test_snapkv_does_not_keep_a_prefix_token_for_its_neighbour_in_the_window():
    # prefix (positions 0..5) then the observation window (6, 7); kernel 3 pools one neighbour each side
    prefix = [0.1, 0.2, 0.9, 0.3, 0.5, 0.05]
    votes = torch.tensor([[prefix + [100.0, 1.0], prefix[::-1] + [1.0, 100.0]]])  # two heads
    cache = _snapkv_cache(votes, window=2, kernel=3, budget=5)
    # by hand, pooling the prefix only: head 0 pools to [.2 .9 .9 .9 .5 .5] -> keep 1, 2, 3 + window;
    # position 5 (votes .05) sits next to the window's 100 and must not ride on it.
    # head 1 (prefix reversed) pools to [.5 .5 .9 .9 .9 .2] -> keep 2, 3, 4 + window
    cache.compress()
    assert cache.positions.tolist() == [[[1, 2, 3, 6, 7], [2, 3, 4, 6, 7]]]


@pytest.mark.parametrize("seed", range(5))
def test_snapkv_keeps_the_top_pooled_prefix_votes_of_the_reference(seed):
    """Reference (SnapKV's code): ``votes[..., :-window]`` max-pooled with padding kernel // 2, top-k
    with k = budget - window among the prefix, then the window. Pooling makes ties, so the kept
    prefix tokens are checked by their reference scores."""
    g = torch.Generator().manual_seed(seed)
    B, H, S, window, kernel, budget = 2, 3, 30, 4, 5, 12
    votes = torch.rand(B, H, S, generator=g) ** 4
    votes[..., S - window] += 10.0  # a loud first window token: pooled into the prefix by the defect
    cache = _snapkv_cache(votes, window, kernel, budget)
    reference = F.max_pool1d(votes[..., :-window].reshape(B * H, 1, -1), kernel, stride=1,
                             padding=kernel // 2).reshape(B, H, -1)
    best = reference.topk(budget - window, dim=-1).values.sort(dim=-1).values
    cache.compress()
    kept = cache.positions
    assert (kept[..., -window:] == torch.arange(S - window, S)).all()
    prefix = kept[..., :-window]
    assert (prefix < S - window).all()
    torch.testing.assert_close(reference.gather(-1, prefix).sort(dim=-1).values, best)


# --- 12. protected sets larger than the budget: deterministic, and h2o_sinks refuses ---------------------

def test_sinks_at_a_budget_below_num_sinks_keep_the_first_sinks_on_every_head():
    cache = KVCache(make_policy({"name": "sinks", "num_sinks": 4}), 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(9):
        cache.append(torch.randn(2, 3, 1, 4, generator=g), torch.randn(2, 3, 1, 4, generator=g))
        cache.observe(torch.rand(2, 3, 1, len(cache), generator=g).softmax(-1))
    # by hand: the sinks rank first, earliest first, so every sequence and head holds tokens 0 and 1
    assert cache.positions.tolist() == [[[0, 1]] * 3] * 2
    prefill = _filled_cache({"name": "sinks", "num_sinks": 4}, 2, 10, B=2, H=3)  # 4 sinks held, 2 slots
    prefill.compress()
    assert prefill.positions.tolist() == [[[0, 1]] * 3] * 2


def test_equal_scores_are_broken_by_recency_the_same_on_every_head():
    """Ties (here: no attention recorded yet) go to the more recent token on every head, not to
    whatever ``topk`` returns among equal values."""
    cache = _filled_cache({"name": "h2o", "recent_ratio": 0.0}, 3, 10, B=2, H=4, mode="continuous")
    cache.evict(3)
    assert cache.positions.tolist() == [[[7, 8, 9]] * 4] * 2


def test_recent_ratio_one_keeps_the_most_recent_like_window_on_every_head():
    h2o = _filled_cache({"name": "h2o", "recent_ratio": 1.0}, 5, 12, B=2, H=3, mode="continuous")
    h2o.accumulated = torch.rand(2, 3, 12, generator=torch.Generator().manual_seed(2))
    assert h2o.policy.keep(h2o, 5).tolist() == [[[7, 8, 9, 10, 11]] * 3] * 2


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 6])
def test_h2o_sinks_without_a_heavy_hitter_slot_keeps_sinks_then_recent_on_every_head(budget):
    policy = make_policy("h2o_sinks")  # 4 sinks + half the budget recent
    assert budget - 4 - int(0.5 * budget) < 1  # no slot left to heavy hitters
    cache = _filled_cache(policy, budget, 12, B=2, H=4, mode="continuous")
    cache.accumulated = torch.rand(2, 4, 12, generator=torch.Generator().manual_seed(budget)) * 5
    cache.evict(budget)
    # by hand: sinks 0..3 first (earliest first), then the most recent (11, 10, ...)
    expected = {1: [0], 2: [0, 1], 3: [0, 1, 2], 5: [0, 1, 2, 3, 11], 6: [0, 1, 2, 3, 10, 11]}[budget]
    assert cache.positions.tolist() == [[expected] * 4] * 2


@pytest.mark.parametrize("budget", [1, 2, 4, 8])
def test_an_eval_policy_refuses_a_token_budget_with_no_heavy_hitter_slot(budget):
    with pytest.raises(ValueError, match="no heavy-hitter slot") as error:
        EvalPolicy(policy="h2o_sinks", budget=budget)
    line = next(line for line in str(error.value).splitlines() if "no heavy-hitter slot" in line)
    assert "use the sinks policy" in line  # the reason is one line
    EvalPolicy(policy="h2o_sinks", budget=9)  # 9 - 4 - 4 = 1 slot
    EvalPolicy(policy={"name": "h2o_sinks", "num_sinks": 1, "recent_ratio": 0.25}, budget=2)
    EvalPolicy(policy="h2o_sinks", budget=0.25)  # fractions are known in tokens at evaluation time only


@pytest.mark.parametrize("budget", [1, 4, 8])
def test_an_eval_policy_refuses_a_snapkv_token_budget_that_holds_only_its_window(budget):
    with pytest.raises(ValueError, match="keeps no token before its 8-token observation window"):
        EvalPolicy(policy="snapkv", budget=budget, mode="prefill")
    EvalPolicy(policy="snapkv", budget=9, mode="prefill")  # one prefix token
    EvalPolicy(policy={"name": "snapkv", "window": 2}, budget=budget + 2, mode="prefill")
    EvalPolicy(policy="snapkv", budget=0.25, mode="prefill")  # a fraction is known in tokens later


def test_snapkv_at_a_budget_of_its_window_keeps_what_window_keeps():
    """Why the budget is refused: with no prefix slot the choice is the window's, whatever the votes."""
    votes = torch.rand(2, 3, 20, generator=torch.Generator().manual_seed(0))
    snap, window = _snapkv_cache(votes, window=4, kernel=3, budget=4), _filled_cache("window", 4, 20, 2, 3)
    snap.compress(), window.compress()
    assert torch.equal(snap.positions, window.positions)


def test_h2o_sinks_with_heavy_hitter_slots_keeps_sinks_heavy_hitters_and_recent():
    policy = make_policy({"name": "h2o_sinks", "num_sinks": 1, "recent_ratio": 0.25})
    cache = _filled_cache(policy, 8, 16, H=2, mode="continuous")
    acc = torch.zeros(1, 2, 16)
    acc[0, 0, [3, 5, 7, 9, 11]] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    acc[0, 1, [2, 4, 6, 8, 10]] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    cache.accumulated = acc
    cache.evict(8)  # 1 sink (0) + 2 recent (14, 15) + 5 heavy hitters
    assert cache.positions.tolist() == [[[0, 3, 5, 7, 9, 11, 14, 15], [0, 2, 4, 6, 8, 10, 14, 15]]]


def test_the_sweep_gives_h2o_sinks_a_heavy_hitter_slot_at_every_budget():
    sweep = runpy.run_path(str(ROOT / "sweeps" / "kv_eviction.py"))
    task = sweep["configs"][0].test_tasks[0]
    generated = rk.make_task(task.name, **task.model_dump(exclude={"name"})).generate(8, seed=0)
    context = set(generated.prefix_len.tolist())
    specs = [spec for config in sweep["configs"] for spec in config.eval_policies
             if spec.policy.name == "h2o_sinks"]
    assert specs
    for spec in specs:
        for length in context:
            b = resolve_budget(spec.budget, length)
            heavy = b - spec.policy.num_sinks - int(spec.policy.recent_ratio * b)
            assert heavy >= 1, (spec, length)
            assert spec.policy.heavy_hitter_slots(b) == heavy


# --- 13. kvpress's compression_ratio spelling ---------------------------------------------------------

def kvpress_kept(T: int, ratio: float) -> int:
    """kvpress (ScorerPress.compress): ``n_kept = int(k_len * (1 - self.compression_ratio))``."""
    return int(T * (1 - ratio))


RATIOS = [0.0, 0.1, 0.2, 0.25, 0.3, 0.33, 0.5, 0.6, 0.7, 0.75, 0.8, 0.875, 0.9, 0.95]


def test_budget_from_compression_ratio_matches_kvpress():
    from recallkit.kv.budget import budget_from_compression_ratio

    for T in range(1, 300):
        for ratio in RATIOS:
            assert budget_from_compression_ratio(ratio, T) == max(1, kvpress_kept(T, ratio)), (T, ratio)
    # by hand: where kvpress's floor and recallkit's rounded fraction part ways
    assert budget_from_compression_ratio(0.5, 7) == 3 and resolve_budget(0.5, 7) == 4
    assert budget_from_compression_ratio(0.75, 6) == 1 and resolve_budget(0.25, 6) == 2
    assert budget_from_compression_ratio(0.9, 100) == 9 and resolve_budget(0.1, 100) == 10  # float: 9.999..
    assert budget_from_compression_ratio(0.9, 5) == 1  # kvpress keeps 0 here; a cache keeps at least 1
    differ = sum(budget_from_compression_ratio(r, T) != resolve_budget(1 - r, T)
                 for T in range(1, 300) for r in RATIOS if r < 1)
    assert differ > 0
    for bad in (-0.1, 1.0, 1.5, True, "0.5"):
        with pytest.raises(ValueError):
            budget_from_compression_ratio(bad, 10)


def test_eval_policy_compression_ratio_resolves_like_kvpress():
    spec = EvalPolicy(policy="snapkv", compression_ratio=0.75, mode="prefill")
    for T in range(1, 200):
        assert resolve_budget(spec.budget, T) == max(1, kvpress_kept(T, 0.75))
    spec = EvalPolicy(policy="h2o", compression_ratio=0.9)
    assert resolve_budget(spec.budget, 100) == 9
    assert float(spec.budget) == pytest.approx(0.1)  # tables show the kept fraction as the budget
    again = EvalPolicy.model_validate(spec.model_dump(mode="json"))
    assert again == spec and again.compression_ratio == 0.9 and resolve_budget(again.budget, 100) == 9
    assert "budget" not in spec.model_dump(mode="json")
    for bad in ({"policy": "h2o"}, {"policy": "h2o", "budget": 0.25, "compression_ratio": 0.75},
                {"policy": "h2o", "compression_ratio": 1.0}, {"policy": "h2o", "compression_ratio": -0.5}):
        with pytest.raises(ValueError):
            EvalPolicy(**bad)


def test_evaluate_with_a_compression_ratio_holds_kvpress_token_counts():
    torch.manual_seed(0)
    model = rk.build_model(rk.ModelConfig(vocab_size=32, d_model=16, num_layers=1,
                                          mixer={"name": "attention", "position": "rope"})).eval()
    batch = rk.make_task("mqar", vocab_size=32, seq_len=24, num_kv_pairs=[3, 5]).generate(8, seed=0)
    spec = EvalPolicy(policy="h2o", compression_ratio=0.75, mode="prefill")
    _, info = evaluate_with_policy(model, batch, spec.policy, spec.budget, spec.mode)
    contexts = set(batch.prefix_len.tolist())
    assert info["budget_tokens"] == max(kvpress_kept(T, 0.75) for T in contexts)


def test_a_compression_ratio_runs_in_a_sweep(tmp_path):
    config = rk.RunConfig(
        model=dict(vocab_size=32, d_model=16, num_layers=1, mixer={"name": "attention", "position": "rope"}),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=3),
        train=dict(max_steps=3, batch_size=8, num_train_examples=32, num_test_examples=8, device="cpu"),
        eval_policies=[{"policy": "h2o", "compression_ratio": 0.75}],
    )
    assert rk.RunConfig.model_validate_json(config.canonical_json()) == config
    run_sweep([config], tmp_path, quiet=True)
    with Store(tmp_path / "results.sqlite") as store:
        evaluations = store.evaluations()
    # 3 pairs: a 6-token context; kvpress keeps int(6 * 0.25) = 1 token (round(0.25 * 6) would be 2):
    # K and V of one token, d = 16, one layer
    assert [(e["policy"], e["budget"], e["state_size"]) for e in evaluations[1:]] == [("h2o", 0.25, 2 * 16)]


# run ids computed before the compression_ratio field existed: existing configs keep their identity
PINNED_RUN = dict(
    model=dict(vocab_size=32, d_model=16, num_layers=1, mixer={"name": "attention", "position": "rope"}),
    task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
    train=dict(max_steps=5, batch_size=8, num_train_examples=64, num_test_examples=16, device="cpu"),
    eval_policies=[{"policy": "window", "budget": 2}, {"policy": "h2o", "budget": 0.5, "mode": "prefill"},
                   {"policy": {"name": "h2o_sinks", "num_sinks": 2}, "budget": 8}],
)


def test_run_ids_of_existing_configs_are_unchanged():
    assert rk.RunConfig(**PINNED_RUN).run_id == "d6f9c31e4f9afb41"
    pretrained = PretrainedRunConfig(model={"pretrained": "tiny:llama"},
                                     task={"name": "phonebook_text", "num_entries": 20}, read_twice=True,
                                     eval_policies=[{"policy": "h2o", "budget": 0.25, "mode": "prefill"}])
    assert pretrained.run_id == "700d3ead8f790ffa"  # pinned after policy became eval_policies
    assert "compression_ratio" not in rk.RunConfig(**PINNED_RUN).canonical_json()


# --- 14. continuous mode: a query sees its budget plus itself ------------------------------------------

@pytest.mark.parametrize("budget", [1, 3, 6])
def test_window_policy_at_budget_b_is_a_sliding_window_of_b_plus_one(budget):
    def model(window):
        mixer = {"name": "attention", "num_heads": 2, **({"window": window} if window else {})}
        torch.manual_seed(0)
        return rk.build_model(rk.ModelConfig(vocab_size=32, d_model=32, num_layers=2, mixer=mixer)).eval()

    evicting, windowed = model(None), model(budget + 1)
    windowed.load_state_dict(evicting.state_dict())
    tokens = torch.randint(0, 32, (3, 20), generator=torch.Generator().manual_seed(3))
    state, _ = evicting_state(evicting, 3, make_policy("window"), budget, "continuous")
    steps = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = evicting.step(tokens[:, t], state)
            steps.append(logits)
        expected = windowed(tokens)
    torch.testing.assert_close(torch.stack(steps, 1), expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and not a window of b (once more than b + 1 tokens have been read)
        narrower = model(budget)
        narrower.load_state_dict(evicting.state_dict())
        assert not torch.allclose(torch.stack(steps, 1)[:, budget + 1:], narrower(tokens)[:, budget + 1:])


# --- budgets and bad input (a review's reference: a token budget means that many tokens) --------------

@pytest.mark.parametrize("number", [np.int64, np.int32, np.uint8])
def test_a_numpy_integer_budget_is_a_token_count_not_a_fraction(number):
    """EvalPolicy read np.int64(1) as the fraction 1.0 (the whole context: no eviction) and refused
    np.int64(4) as a bad fraction; budgets built with np.arange must mean what Python ints mean."""
    for tokens in (1, 4):
        policy = EvalPolicy(policy="h2o", budget=number(tokens))
        assert type(policy.budget) is int and resolve_budget(policy.budget, 64) == tokens
        assert resolve_budget(number(tokens), 64) == tokens
        assert policy == EvalPolicy(policy="h2o", budget=tokens)  # and so the same run id
    assert resolve_budget(np.float64(0.25), 64) == 16
    assert KVCache(make_policy("window"), np.int64(3)).budget == 3


def test_a_policy_that_never_evicts_refuses_a_partial_budget_everywhere():
    """rk.evaluate(policy='full', budget=3) reported budget_tokens=3 for a cache that held every token;
    EvalPolicy already refused it."""
    torch.manual_seed(0)
    model = rk.build_model(rk.ModelConfig(vocab_size=32, d_model=16, num_layers=1,
                                          mixer={"name": "attention", "num_heads": 2})).eval()
    batch = rk.make_task("mqar", vocab_size=32, seq_len=16, num_kv_pairs=[2]).generate(4, seed=0)
    for budget in (3, 0.5, 1):
        with pytest.raises(ValueError, match="full never evicts"):
            rk.evaluate(model, batch, policy="full", budget=budget)
    whole = rk.evaluate(model, batch, policy="full", budget=1.0)
    assert whole["state_size"] == model.state_size(16)  # every token held, as reported
    assert EvalPolicy(policy="full", compression_ratio=0.0).budget == 1.0  # evicts nothing: the whole
    with pytest.raises(ValueError, match="full never evicts"):
        EvalPolicy(policy="full", compression_ratio=0.5)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: make_policy(None), "an eviction policy is a name"),
    (lambda: make_policy(3), "an eviction policy is a name"),
    (lambda: KVCache(make_policy("window"), 2.5), "whole number of tokens"),
    (lambda: KVCache(make_policy("window"), True), "whole number of tokens"),
])
def test_bad_policies_and_budgets_are_named(make, message):
    """make_policy(None) raised "'NoneType' object is not iterable"; a cache with budget 2.5 was built
    and failed at its first eviction on a slice index."""
    with pytest.raises(ValueError, match=message):
        make()


def test_attention_over_another_number_of_keys_than_the_cache_holds_is_refused():
    """Attention over 3 keys observed by a cache holding 1 broadcast into its statistics silently."""
    cache = _filled_cache("h2o", 4, S=1, H=2)
    with pytest.raises(ValueError, match="attention over 3 keys observed by a cache holding 1"):
        cache.observe(torch.ones(1, 2, 1, 3) / 3)
    cache.observe(torch.ones(1, 2, 1, 1))
    assert cache.accumulated.shape == (1, 2, 1)
