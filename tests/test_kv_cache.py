"""KV-cache eviction: budgets, policy choices against brute-force references, modes, evaluation rows."""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.config import EvalPolicy
from recallkit.inference import KVCache, evaluate_with_policy, evicting_state, make_policy, resolve_budget
from recallkit.ops.rotary import rotate_at
from recallkit.report import frontier_points, write_report
from recallkit.tasks.base import Batch
from recallkit.sweep import Store, run_sweep
from tests.cases import POLICY_CASES, policy_id

ATTENTION = {"name": "attention", "num_heads": 4, "num_kv_heads": 2, "position": "rope"}
T = 24


def tiny_model(mixer: dict | list[dict] = ATTENTION, seed: int = 0) -> rk.LanguageModel:
    torch.manual_seed(seed)
    return rk.build_model(rk.ModelConfig(vocab_size=32, d_model=32, num_layers=2, mixer=mixer)).eval()


def step_logits(model, tokens, policy, budget, mode="continuous", context_len=None, after_step=None):
    """Logits (B, T, V) of the step loop with evicting caches; ``after_step(t, caches)`` may inspect."""
    state, caches = evicting_state(model, tokens.shape[0], make_policy(policy), budget, mode)
    out = []
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            out.append(logits)
            if context_len is not None and t + 1 == context_len:
                for cache in caches:
                    cache.compress()
            if after_step is not None:
                after_step(t, caches)
    return torch.stack(out, 1)

def _append(cache: KVCache, key: torch.Tensor, value: torch.Tensor) -> None:
    """One token: key, value (B, H_kv, d) as a block of one."""
    cache.append(key[:, :, None], value[:, :, None])


def _observe(cache: KVCache, attention: torch.Tensor) -> None:
    """One query's attention (B, H_kv, S) as a block of one."""
    cache.observe(attention[:, :, None])


@pytest.fixture
def tokens():
    return torch.randint(0, 32, (3, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mixer", [
    ATTENTION,
    {"name": "attention", "num_heads": 2, "position": "alibi", "short_conv": 3},
    {"name": "attention", "num_heads": 4, "position": "hard_alibi"},
    {"name": "attention", "num_heads": 2, "window": 5},
], ids=["rope_gqa", "alibi_conv", "hard_alibi", "window"])
def test_full_policy_equals_the_parallel_form(mixer, tokens):
    model = tiny_model(mixer)
    with torch.no_grad():
        expected = model(tokens)
    torch.testing.assert_close(step_logits(model, tokens, "full", None), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_a_sliding_window_layer_holds_and_counts_only_its_window(mode, tokens):
    """Its cache drops what the window masks: under ``full`` it holds (and reports) what the plain
    windowed state holds, with the parallel form's predictions; under a policy it never spends its
    budget on a masked token. (An evicting cache once kept and counted every token of the prompt.)"""
    model = tiny_model({"name": "attention", "num_heads": 2, "window": 5})
    T = tokens.shape[1]
    batch = Batch(tokens, tokens, torch.full((3,), 8))
    with torch.no_grad():
        expected = model(tokens).argmax(-1)
    predictions, info = evaluate_with_policy(model, batch, "full", 1.0, mode=mode)
    assert torch.equal(predictions, expected)
    assert info["state_size"] == model.state_size(T)
    state, caches = evicting_state(model, 3, make_policy("h2o"), 4, mode)
    with torch.no_grad():
        for t in range(T):
            if mode == "prefill" and t == 8:  # the next query reads 4 of the 8 tokens: the 4 kept
                for cache in caches:
                    cache.compress()
                    assert bool((cache.positions >= 8 - 4).all())
            _, state = model.step(tokens[:, t], state)
            if mode == "continuous":  # the 4 kept after every token are those the next query reads
                assert all(bool((cache.positions > t - 4).all()) for cache in caches)
            assert sum(cache.numel() for cache in caches) // 3 <= model.state_size(t + 1)


@pytest.mark.parametrize("policy", POLICY_CASES, ids=policy_id)
@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_a_budget_of_the_window_is_the_windowed_model_under_every_policy(policy, mode, tokens):
    """A window of 5 counts the query: a query reads itself and the 4 tokens before it (the parallel
    form's mask, 0 <= i - j < w). So 4 tokens are all a windowed layer can use, and every policy at
    a budget of 4 must give the parallel form's logits and hold only tokens the next query reads."""
    model = tiny_model({"name": "attention", "num_heads": 2, "window": 5})
    with torch.no_grad():
        expected = model(tokens)

    def readable(t, caches):
        assert all(bool((cache.positions > t - 5 + 1).all()) for cache in caches)

    logits = step_logits(model, tokens, policy, 4, mode, context_len=8, after_step=readable)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", POLICY_CASES, ids=policy_id)
@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_every_policy_runs_a_bfloat16_model_with_float32_statistics(policy, mode, tokens):
    model = tiny_model(ATTENTION).to(torch.bfloat16)
    seen = []
    logits = step_logits(model, tokens, policy, 6, mode, context_len=8,
                         after_step=lambda t, caches: seen.extend(caches))
    assert logits.dtype == torch.bfloat16 and logits.isfinite().all()
    for cache in seen:
        assert cache.key.dtype == torch.bfloat16
        assert all(t.dtype == torch.float32 for t in (cache.accumulated, cache.last) + (
            () if cache.recent is None else (cache.recent,)))


def test_every_registered_policy_has_a_case():
    assert {p if isinstance(p, str) else p["name"] for p in POLICY_CASES} == set(rk.POLICIES)


@pytest.mark.parametrize("policy", POLICY_CASES, ids=policy_id)
@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_every_policy_with_budget_at_least_T_equals_full(policy, mode, tokens):
    model = tiny_model()
    full = step_logits(model, tokens, "full", None)
    torch.testing.assert_close(step_logits(model, tokens, policy, T, mode, context_len=10), full)


@pytest.mark.parametrize("policy", [p for p in POLICY_CASES if p != "full"], ids=policy_id)
def test_continuous_budget_is_never_exceeded(policy):
    model = tiny_model()
    for trial in range(3):  # random sequences and budgets
        g = torch.Generator().manual_seed(trial)
        tokens = torch.randint(0, 32, (2, T), generator=g)
        budget = int(torch.randint(1, T, (1,), generator=g))
        sizes: list[list[tuple[int, ...]]] = []

        def record(t, caches, sizes=sizes):
            sizes.append([(len(c), c.key.shape[2], c.positions.shape[2], c.accumulated.shape[2], c.peak)
                          for c in caches])  # the peak is what the cache held between tokens

        step_logits(model, tokens, policy, budget, after_step=record)
        assert all(max(s) <= budget for step in sizes for s in step)
        assert sizes[-1][0][0] == budget
        cache = evicting_state(model, 2, make_policy(policy), budget, "continuous")[1][0]
        assert cache.numel() == 0


@pytest.mark.parametrize("policy", [p for p in POLICY_CASES if p != "random"], ids=policy_id)
@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_a_sequence_keeps_the_same_tokens_alone_and_in_a_batch(policy, mode):
    """Repeated tokens tie in exact arithmetic (knorm: one key norm, as RoPE is a rotation), and the
    batch's float rounding must not break the tie: recency does, on every row (only ``random``
    depends on the batch, as documented)."""
    model = tiny_model()
    tokens = torch.randint(0, 6, (3, 20), generator=torch.Generator().manual_seed(1))  # many repeats
    batched = _kept_positions(policy, 5, tokens, model, mode, context_len=12)
    for row in range(3):
        alone = _kept_positions(policy, 5, tokens[row : row + 1], model, mode, context_len=12)
        assert all(torch.equal(b[row], a[0]) for b, a in zip(batched, alone)), (row, policy)


def _kept_positions(policy, budget, tokens, model=None, mode="continuous", context_len=None):
    model = model or tiny_model()
    kept = []
    step_logits(model, tokens, policy, budget, mode, context_len,
                after_step=lambda t, caches: kept.append(caches[0].positions.clone()))
    return kept


def test_window_keeps_the_most_recent_positions(tokens):
    kept = _kept_positions("window", 6, tokens)
    for t, positions in enumerate(kept):
        expected = torch.arange(max(0, t - 5), t + 1)
        assert (positions == expected).all()


def test_sinks_keep_the_first_tokens_and_the_most_recent(tokens):
    kept = _kept_positions({"name": "sinks", "num_sinks": 2}, 6, tokens)
    for t, positions in enumerate(kept[6:], start=6):
        expected = torch.tensor([0, 1, t - 3, t - 2, t - 1, t])
        assert (positions == expected).all()


def test_sinks_reindex_positions_uses_cache_slots(tokens):
    policy = make_policy({"name": "sinks", "num_sinks": 2, "reindex_positions": True})
    cache = KVCache(policy, 4)
    for _ in range(9):
        _append(cache, torch.randn(1, 1, 8), torch.randn(1, 1, 8))
        _observe(cache, torch.full((1, 1, len(cache)), 1.0 / len(cache)))
    assert cache.positions.tolist() == [[[0, 1, 7, 8]]]
    assert cache.key_positions.tolist() == [[[0, 1, 2, 3]]] and cache.next_position == 4
    # a reindexed model still runs and differs from keeping the original positions once tokens leave
    model = tiny_model()
    original = step_logits(model, tokens, {"name": "sinks", "num_sinks": 2}, 6)
    reindexed = step_logits(model, tokens, {"name": "sinks", "num_sinks": 2, "reindex_positions": True}, 6)
    torch.testing.assert_close(original[:, :6], reindexed[:, :6])
    assert not torch.allclose(original[:, 7:], reindexed[:, 7:])


def test_h2o_keeps_the_top_accumulated_attention_tokens_against_brute_force():
    torch.manual_seed(0)
    policy = make_policy({"name": "h2o", "recent_ratio": 0.25})
    budget, B, H = 8, 2, 3
    cache = KVCache(policy, budget)
    received = torch.zeros(B, H, 0)  # brute force: every token's total attention, never evicted
    alive = [[list(range(0)) for _ in range(H)] for _ in range(B)]
    for t in range(20):
        _append(cache, torch.randn(B, H, 4), torch.randn(B, H, 4))
        received = torch.cat([received, torch.zeros(B, H, 1)], dim=2)
        for b in range(B):
            for h in range(H):
                alive[b][h].append(t)
        attention = torch.rand(B, H, len(cache)).softmax(-1)
        for b in range(B):
            for h in range(H):
                received[b, h, alive[b][h]] += attention[b, h]
        _observe(cache, attention)
        for b in range(B):
            for h in range(H):
                if len(alive[b][h]) > budget:
                    recent = alive[b][h][-int(0.25 * budget):]
                    rest = [p for p in alive[b][h] if p not in recent]
                    heavy = sorted(rest, key=lambda p: -received[b, h, p].item())[: budget - len(recent)]
                    alive[b][h] = sorted(heavy + recent)
        assert cache.positions.tolist() == alive


def test_tova_drops_the_least_attended_token_averaged_over_heads():
    cache = KVCache(make_policy("tova"), 3)
    for _ in range(3):
        _append(cache, torch.randn(1, 2, 4), torch.randn(1, 2, 4))
        _observe(cache, torch.full((1, 2, len(cache)), 1.0 / len(cache)))
    _append(cache, torch.randn(1, 2, 4), torch.randn(1, 2, 4))
    # head 0 dislikes position 1, head 1 dislikes position 2 more strongly: the mean drops 2 in both heads
    _observe(cache, torch.tensor([[[0.4, 0.1, 0.3, 0.2], [0.4, 0.3, 0.0, 0.3]]]))
    assert cache.positions.tolist() == [[[0, 1, 3], [0, 1, 3]]]


@pytest.mark.parametrize("history", [0, 12])  # 12: a cache that records more queries (for forks)
def test_snapkv_keeps_the_observation_window_and_what_it_attended(history):
    policy = make_policy({"name": "snapkv", "window": 2, "kernel_size": 1})
    cache = KVCache(policy, 4, mode="prefill", history=history)
    for t in range(10):
        _append(cache, torch.randn(1, 1, 4), torch.randn(1, 1, 4))
        attention = torch.full((1, 1, len(cache)), 0.01)
        if t >= 8:  # the last two queries look at positions 3 and 0
            attention[..., 3], attention[..., 0] = 0.5, 0.3
        elif t >= 5:  # earlier queries looked at position 5, which SnapKV must not count
            attention[..., 5] = 0.9
        _observe(cache, attention)
    assert len(cache) == 10  # prefill mode: nothing leaves before the context ends
    cache.compress()
    assert cache.positions.tolist() == [[[0, 3, 8, 9]]]


@pytest.mark.parametrize("history", [0, 12])
def test_scissorhands_counts_only_its_own_history_window(history):
    """Scissorhands with W = 2 over 8 tokens: the last two queries attend to tokens 0-3 only, the
    earlier ones to 4 and 5 only. Over the last W queries tokens 0-3 are never below the uniform share
    (0 counts), 4 and 5 twice, 6 twice and 7 once (counted over the steps it was present), so a budget
    of 4 keeps 0-3, whatever older queries the cache also recorded."""
    policy = make_policy({"name": "scissorhands", "history_window": 2, "recent_ratio": 0.0})
    cache = KVCache(policy, 4, mode="prefill", history=history)
    cache.append(torch.randn(1, 1, 8, 4), torch.randn(1, 1, 8, 4))
    attention = torch.eye(8)  # queries 0 and 1 attend to themselves
    attention[2:6] = 0.0
    attention[2:6, 4:6] = 0.5  # (4 and 5 are not yet there for queries 2 and 3: future columns, masked)
    attention[6:] = 0.0
    attention[6:, :4] = 0.25
    cache.observe(attention.tril()[None, None])
    cache.compress()
    assert cache.positions.tolist() == [[[0, 1, 2, 3]]]


def test_knorm_keeps_low_norm_keys_and_random_is_seeded():
    cache = KVCache(make_policy("knorm"), 2)
    for scale in (3.0, 1.0, 5.0, 0.5):
        _append(cache, torch.full((1, 1, 4), scale), torch.zeros(1, 1, 4))
        _observe(cache, torch.full((1, 1, len(cache)), 1.0 / len(cache)))
    assert cache.positions.tolist() == [[[1, 3]]]

    def run(seed):
        c = KVCache(make_policy("random"), 3, seed=seed)
        for _ in range(12):
            _append(c, torch.randn(2, 2, 4), torch.randn(2, 2, 4))
            _observe(c, torch.full((2, 2, len(c)), 1.0 / len(c)))
        return c.positions
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_scissorhands_drops_the_persistently_unimportant_token_first():
    cache = KVCache(make_policy({"name": "scissorhands", "history_window": 4, "recent_ratio": 0.0}), 3)
    for t in range(4):
        _append(cache, torch.randn(1, 1, 4), torch.randn(1, 1, 4))
        attention = torch.full((1, 1, len(cache)), 1.0)
        if len(cache) > 2:
            attention[..., 2] = 0.0  # position 2 never gets its share
        _observe(cache, attention / attention.sum(-1, keepdim=True))
    assert cache.positions.tolist() == [[[0, 1, 3]]]


def test_prefill_mode_compresses_once_then_appends(tokens):
    sizes = []
    step_logits(tiny_model(), tokens, "h2o", 4, "prefill", context_len=10,
                after_step=lambda t, caches: sizes.append(len(caches[0])))
    assert sizes[:10] == list(range(1, 10)) + [4]
    assert sizes[10:] == list(range(5, 5 + T - 10))


def test_budgets_resolve_and_bad_ones_are_refused():
    assert resolve_budget(8, 100) == 8 and resolve_budget(0.25, 10) == 2 and resolve_budget(0.01, 10) == 1
    for bad in (0, 1.5, 0.0, "half", True):
        with pytest.raises(ValueError):
            resolve_budget(bad, 10)
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_policy("lru")
    for mixer in ("linear_attention", "mla", "fox"):  # mla and fox keep caches, which are not evicted
        refused = r"softmax attention layers .*not mla's latents or fox's decayed cache\), and this model has"
        with pytest.raises(ValueError, match=refused):
            evicting_state(tiny_model({"name": mixer}), 1, make_policy("h2o"), 4, "continuous")
    with pytest.raises(ValueError, match="prefix-aware"):
        evicting_state(tiny_model([{"name": "pla"}, ATTENTION]), 1, make_policy("h2o"), 4, "continuous")


@pytest.mark.parametrize("short_conv", [0, 3])
def test_evaluate_with_a_policy_reports_what_the_budget_holds(short_conv):
    model = tiny_model({**ATTENTION, "short_conv": short_conv})
    task = rk.make_task("mqar", vocab_size=32, seq_len=T, num_kv_pairs=[2, 4])
    batch = task.generate(16, seed=0)
    plain = rk.evaluate(model, batch)
    full = rk.evaluate(model, batch, policy="full", budget=1.0)
    assert full["accuracy"] == plain["accuracy"] and full["state_size"] == model.state_size(T)
    assert rk.evaluate(model, batch, policy="full") == full  # it never evicts: no budget needed
    assert EvalPolicy(policy="full").budget == 1.0
    with pytest.raises(ValueError, match="needs a budget"):
        rk.evaluate(model, batch, policy="window")
    small = rk.evaluate(model, batch, policy="window", budget=3)
    per_token = 2 * 2 * 8  # K and V, 2 KV heads of 8
    conv = 2 * 32 * (short_conv - 1) if short_conv else 0  # the conv tails stay in the state
    assert small["state_size"] == 2 * 3 * per_token + conv and small["budget_tokens"] == 3
    half = rk.evaluate(model, batch, policy="h2o", budget=0.5, mode="prefill")
    assert half["budget"] == 0.5 and half["mode"] == "prefill" and half["policy"] == "h2o"
    predictions, info = evaluate_with_policy(model, batch, "window", 3)
    assert predictions.shape == batch.inputs.shape and info["state_size"] == small["state_size"]
    with pytest.raises(ValueError, match="needs a budget"):
        rk.evaluate(model, batch, policy="h2o")


def test_eval_policies_become_evaluation_rows_in_the_store(tmp_path):
    config = rk.RunConfig(
        model=dict(vocab_size=32, d_model=16, num_layers=1, mixer={"name": "attention", "position": "rope"}),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
        train=dict(max_steps=5, batch_size=8, num_train_examples=64, num_test_examples=16, device="cpu"),
        eval_policies=[{"policy": "window", "budget": 2},
                       {"policy": "h2o", "budget": 0.5, "mode": "prefill"}],
    )
    run_sweep([config], tmp_path, quiet=True)
    with Store(tmp_path / "results.sqlite") as store:
        evaluations = store.evaluations()
    assert [(e["policy"], e["budget"], e["mode"]) for e in evaluations] == [
        (None, None, None), ("window", 2, "continuous"), ("h2o", 0.5, "prefill")]
    assert evaluations[1]["state_size"] == 2 * 2 * 16  # 2 tokens of K and V, d=16, one layer
    with Store(tmp_path / "results.sqlite") as store:
        points = {(p.panel, p.label) for p in frontier_points(store.rows())}
    label = config.display_label
    assert points == {("mqar T=16", label), ("mqar T=16, KV eviction (continuous)", f"{label} [window]"),
                      ("mqar T=16, KV eviction (prefill)", f"{label} [h2o]")}
    page = write_report(tmp_path)[1].read_text()
    assert "KV budget" in page and "<td>0.5</td>" in page and "<td>2</td>" in page


@pytest.mark.parametrize("policy", POLICY_CASES, ids=policy_id)
def test_prefill_mode_reads_the_context_in_one_block_as_token_by_token(policy, tokens):
    """One prefill block over the context gives the same statistics, kept tokens and logits as
    reading it token by token (the statistics are sums over the same queries)."""
    model, context_len, budget = tiny_model(), 14, 5
    stepped = step_logits(model, tokens, policy, budget, "prefill", context_len=context_len)
    state, caches = evicting_state(model, tokens.shape[0], make_policy(policy), budget, "prefill")
    with torch.no_grad():
        head, state = model.prefill(tokens[:, :context_len], state=state)
        for cache in caches:
            cache.compress()
        tail = []
        for t in range(context_len, T):
            logits, state = model.step(tokens[:, t], state)
            tail.append(logits)
    torch.testing.assert_close(torch.cat([head, torch.stack(tail, 1)], 1), stepped, atol=1e-5, rtol=1e-5)


def test_reindexed_keys_are_rotated_at_their_cache_slots():
    """StreamingLLM: after eviction every kept key carries the rotation of its slot in the cache,
    the key it would have had if it had been appended there (reference: rotate the raw keys)."""
    base, budget = 10_000.0, 4
    cache = KVCache(make_policy({"name": "sinks", "num_sinks": 1, "reindex_positions": True}), budget,
                    rotate=lambda x, shift: rotate_at(x, shift, base))
    raw = torch.randn(9, 1, 2, 8)  # (T, B, H_kv, d_h) keys before RoPE
    for t in range(9):
        key = rotate_at(raw[t][:, :, None], torch.tensor([cache.next_position]), base)
        cache.append(key, torch.zeros_like(key))
        cache.observe(torch.full((1, 2, 1, len(cache)), 1.0 / len(cache)))
    kept = cache.positions[0, 0].tolist()
    assert kept == [0, 6, 7, 8]
    expected = rotate_at(raw[kept].permute(1, 2, 0, 3), torch.arange(budget), base)  # (B, H_kv, S, d_h)
    torch.testing.assert_close(cache.key, expected, atol=1e-5, rtol=1e-5)


def test_the_reported_state_is_the_mean_over_context_groups_whatever_the_batch_size():
    """Four sequences with a 4-token context and one with 12, budget 2 in prefill mode: each keeps 2
    context tokens plus what it decodes (12 and 4), so the groups hold 14 and 6 tokens."""
    model = tiny_model({"name": "attention", "num_heads": 2})
    inputs = torch.randint(0, 32, (5, 16), generator=torch.Generator().manual_seed(0))
    batch = Batch(inputs, inputs.roll(-1, 1), torch.tensor([4, 4, 4, 4, 12]), {})
    per_token = sum(block.mixer.kv_numbers_per_token() for block in model.blocks)
    for batch_size in (256, 2, 1):
        _, info = evaluate_with_policy(model, batch, "window", 2, mode="prefill", batch_size=batch_size)
        assert info["state_size"] == round((14 + 6) / 2 * per_token)


@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_an_evicting_cache_holds_only_its_own_tensors(mode, tokens):
    """Not views of the prompt's projections or of its (T, S) attention, which would stay alive."""
    model = tiny_model()
    state, caches = evicting_state(model, tokens.shape[0], make_policy("h2o"), 100, mode)
    with torch.no_grad():
        model.prefill(tokens, state=state)
    for cache in caches:
        for tensor in (cache.key, cache.value, cache.accumulated, cache.last):
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
