"""KV eviction inside Hugging Face attention layers (tiny:llama, 4 query / 2 KV heads, RoPE; hybrids).

References come from the policies' definitions: which positions a window or StreamingLLM keeps, the
logits of the plain model under the attention mask that keeping means (tokens keep their original
positions, so the kept set is exactly a mask over the full sequence), and RoPE written out from its
definition for the re-indexed keys.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
pytest.importorskip("transformers", minversion="5")

import torch

import recallkit as rk
from recallkit.hf import evicting, load_model
from recallkit.hf.cache_state import cache_numel_parts
from recallkit.inference import evaluate_with_policy, evicting_state, make_policy
from recallkit.tasks.base import Batch

T, CONTEXT = 16, 6
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny:llama")


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(3, 512, (2, T), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def plain_logits(llama, tokens):
    """No policy: prefill the context, then step, through transformers' own cache."""
    with torch.no_grad():
        head, state = llama.prefill(tokens[:, :CONTEXT])
        tail = []
        for t in range(CONTEXT, T):
            logits, state = llama.step(tokens[:, t], state)
            tail.append(logits)
    return torch.cat([head, torch.stack(tail, 1)], 1)


def run_policy(model, tokens, policy, budget, mode="continuous", block=0, after_step=None):
    """Logits (B, T, V) with evicting caches, and the caches: the first ``block`` tokens in one prefill,
    the rest one step at a time; after token CONTEXT - 1 the caches compress (once, to the budget, in
    prefill mode; a no-op in continuous mode). ``after_step(t, caches)`` sees the caches after token t
    (after the block: t = block - 1)."""
    state, caches = evicting_state(model, tokens.shape[0], make_policy(policy), budget, mode)
    out = []

    def read(t):
        if t + 1 == CONTEXT:
            for cache in caches:
                cache.compress()
        if after_step is not None:
            after_step(t, caches)

    with torch.no_grad():
        if block:
            logits, state = model.prefill(tokens[:, :block], state=state)
            out.append(logits)
            read(block - 1)
        for t in range(block, tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            out.append(logits[:, None])
            read(t)
    return torch.cat(out, 1), caches


def masked_reference(model, tokens, allowed):
    """Logits of the plain model when query t may attend to key s iff ``allowed[t, s]`` (T, T)."""
    B, n = tokens.shape
    mask = torch.zeros(B, 1, n, n).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        return model.model(input_ids=tokens, attention_mask=mask, use_cache=False).logits


def _distance():
    i = torch.arange(T)
    return i[:, None] - i[None, :]  # (query, key)


def test_the_masked_reference_with_a_causal_mask_is_the_plain_model(llama, tokens, plain_logits):
    causal = masked_reference(llama, tokens, _distance() >= 0)
    torch.testing.assert_close(causal, plain_logits, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(llama(tokens), plain_logits, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("mode", ["continuous", "prefill"])
@pytest.mark.parametrize("policy", sorted(rk.POLICIES))
def test_budget_of_the_whole_sequence_equals_no_policy(llama, tokens, plain_logits, policy, mode):
    logits, caches = run_policy(llama, tokens, policy, T, mode, block=CONTEXT)
    torch.testing.assert_close(logits, plain_logits, atol=ATOL, rtol=ATOL)
    assert len(caches) == 2 and all(cache.positions[0, 0].tolist() == list(range(T)) for cache in caches)


def _record_attended(caches, attended):
    """Wrap each cache's observe_summary: ``attended`` gets (keys attended, tokens held) during every step."""
    for cache in caches:
        observe = cache.observe_summary

        def wrapped(total, tail, num_queries, cache=cache, observe=observe):
            attended.append((total.shape[-1], len(cache)))
            return observe(total, tail, num_queries)

        cache.observe_summary = wrapped


def test_window_keeps_the_last_budget_positions_and_never_exceeds_the_budget(llama, tokens):
    budget, kept, attended = 5, [], []

    def after_step(t, caches):
        if t == 0:
            _record_attended(caches, attended)  # the first token was read before the wrap: 1 key
        kept.append([(cache.positions.clone(), len(cache), cache.peak) for cache in caches])

    logits, _ = run_policy(llama, tokens, "window", budget, after_step=after_step)
    for t, layers in enumerate(kept):
        expected = list(range(max(0, t - budget + 1), t + 1))
        for positions, held, peak in layers:
            assert held == len(expected) <= budget and peak <= budget
            assert (positions == torch.tensor(expected)).all()  # every row and KV head
    assert max(a for a, _ in attended) == budget + 1 and all(a == h <= budget + 1 for a, h in attended)
    # kept tokens keep their positions: query t attends exactly to keys t - budget .. t
    distance = _distance()
    reference = masked_reference(llama, tokens, (distance >= 0) & (distance <= budget))
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=ATOL)
    assert not torch.allclose(logits[:, budget + 1 :], llama(tokens)[:, budget + 1 :], atol=1e-3)


def test_sinks_keep_the_first_tokens_and_the_most_recent(llama, tokens):
    budget, num_sinks, kept = 6, 2, []
    policy = {"name": "sinks", "num_sinks": num_sinks}
    logits, _ = run_policy(llama, tokens, policy, budget,
                           after_step=lambda t, caches: kept.append([c.positions.clone() for c in caches]))
    recent = budget - num_sinks
    for t, layers in enumerate(kept):
        expected = list(range(t + 1)) if t < budget else [0, 1, *range(t - recent + 1, t + 1)]
        assert all((positions == torch.tensor(expected)).all() for positions in layers)
    distance, key = _distance(), torch.arange(T)[None, :]
    allowed = (distance >= 0) & ((key < num_sinks) | (distance <= recent))
    torch.testing.assert_close(logits, masked_reference(llama, tokens, allowed), atol=ATOL, rtol=ATOL)


def rope_reference(x, shift, base):
    """RoPE from its definition: channel pairs (i, i + d/2) rotate by shift * base^(-2i/d).
    x (..., S, d), shift (..., S) -> x rotated, in float64."""
    x, d = x.double(), x.shape[-1]
    inv_freq = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    angle = shift.double()[..., None] * inv_freq  # (..., S, d/2)
    first, second = x[..., : d // 2], x[..., d // 2 :]
    cos, sin = angle.cos(), angle.sin()
    return torch.cat([first * cos - second * sin, second * cos + first * sin], -1)


def test_rope_reference_reproduces_the_keys_of_a_plain_prefill(llama, tokens):
    config, layer = llama.hf_config, llama.model.model.layers[0]
    with torch.no_grad():
        _, state = llama.prefill(tokens)
        hidden = layer.input_layernorm(llama.embed(tokens))
        raw = layer.self_attn.k_proj(hidden).view(2, T, config.num_key_value_heads, config.head_dim)
        raw = raw.transpose(1, 2)  # (B, H_kv, T, d) before RoPE
    expected = rope_reference(raw, torch.arange(T).expand(2, 2, T), config.rope_parameters["rope_theta"])
    torch.testing.assert_close(state.cache.layers[0].keys.double(), expected, atol=1e-5, rtol=1e-5)


def test_reindexed_sinks_store_keys_rotated_at_their_slot(llama, tokens):
    """StreamingLLM: each kept key is the key a plain prefill computed at its original position p,
    rotated on to its cache slot j (by j - p). Layer 0's pre-RoPE keys depend on the token alone,
    so they are comparable; deeper layers see different inputs once eviction starts."""
    budget, base = 5, llama.hf_config.rope_parameters["rope_theta"]
    with torch.no_grad():
        _, state = llama.prefill(tokens)
    plain = state.cache.layers[0].keys  # (B, H_kv, T, d), rotated at the original positions
    shifts = []

    def after_step(t, caches):
        cache = caches[0]
        positions, slots = cache.positions, torch.arange(len(cache))
        assert (cache.key_positions == slots).all() and cache.next_position == len(cache)
        assert positions[0, 0].tolist() == (list(range(t + 1)) if t < budget else [0, *range(t - 3, t + 1)])
        original = plain.gather(2, positions[..., None].expand(-1, -1, -1, plain.shape[-1]))
        shift = slots - positions
        shifts.append(shift.abs().max().item())
        expected = rope_reference(original, shift, base)
        torch.testing.assert_close(cache.key.double(), expected, atol=1e-5, rtol=1e-5)

    policy = {"name": "sinks", "num_sinks": 1, "reindex_positions": True}
    run_policy(llama, tokens, policy, budget, after_step=after_step)
    assert max(shifts) == T - budget  # the newest token moved furthest: from T - 1 to budget - 1


@pytest.mark.parametrize("chunk", [3, 256])
def test_caches_observe_the_attention_averaged_over_each_kv_heads_query_heads(llama, tokens, chunk,
                                                                              monkeypatch):
    """What H2O / TOVA rank by, against layer 0's attention computed by hand: softmax(q k / sqrt(d))
    with a causal mask, the query heads 2j, 2j + 1 averaged for KV head j; the block read in query
    chunks of 3 (each seeing only the keys up to its last query) or in one."""
    monkeypatch.setattr(evicting, "QUERY_CHUNK", chunk)
    config, layer = llama.hf_config, llama.model.model.layers[0]
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    base, positions = config.rope_parameters["rope_theta"], torch.arange(T)
    with torch.no_grad():
        hidden = layer.input_layernorm(llama.embed(tokens))
        query = layer.self_attn.q_proj(hidden).view(2, T, heads, d).transpose(1, 2)  # before RoPE
        key = layer.self_attn.k_proj(hidden).view(2, T, kv_heads, d).transpose(1, 2)
    query, key = rope_reference(query, positions, base), rope_reference(key, positions, base)
    scores = query @ key.repeat_interleave(heads // kv_heads, dim=1).transpose(-1, -2) / d**0.5
    attention = scores.masked_fill(_distance() < 0, float("-inf")).softmax(-1)  # (B, H, T, T)
    per_kv_head = attention.view(2, kv_heads, heads // kv_heads, T, T).mean(2)
    _, caches = run_policy(llama, tokens, "h2o", T, "prefill", block=CONTEXT)
    torch.testing.assert_close(caches[0].accumulated.double(), per_kv_head.sum(2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(caches[0].last.double(), per_kv_head[:, :, -1], atol=1e-5, rtol=1e-5)
    rings = {}  # SnapKV's last 5 queries after the context, spread over two chunks of 3

    def keep_ring(t, caches):
        if t == CONTEXT - 1:
            rings[t] = caches[0].recent.clone()  # (B, H_kv, CONTEXT, 5): query i in slot i % 5

    snapkv = {"name": "snapkv", "window": 5, "kernel_size": 1}
    run_policy(llama, tokens, snapkv, T, "prefill", block=CONTEXT, after_step=keep_ring)
    for i in range(CONTEXT - 5, CONTEXT):
        torch.testing.assert_close(rings[CONTEXT - 1][..., i % 5].double(), per_kv_head[:, :, i, :CONTEXT],
                                   atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(evicting, "QUERY_CHUNK", 256)
    whole, _ = run_policy(llama, tokens, "full", T, "prefill", block=T)
    monkeypatch.setattr(evicting, "QUERY_CHUNK", chunk)
    chunked, _ = run_policy(llama, tokens, "full", T, "prefill", block=T)
    torch.testing.assert_close(chunked, whole, atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("policy", ["h2o", {"name": "snapkv", "window": 2, "kernel_size": 3}, "tova"],
                         ids=["h2o", "snapkv", "tova"])
def test_prefill_mode_block_equals_token_by_token(llama, tokens, policy):
    """The statistics are sums over the same queries, so the kept tokens and the logits agree; the
    kept set is not just the most recent tokens (the statistics decide)."""
    budget, after_compress = 3, {}

    def record(name):
        def after_step(t, caches):
            if t == CONTEXT - 1:
                after_compress[name] = [c.positions.clone() for c in caches]
        return after_step

    block, block_caches = run_policy(llama, tokens, policy, budget, "prefill", block=CONTEXT,
                                     after_step=record("block"))
    stepped, step_caches = run_policy(llama, tokens, policy, budget, "prefill", after_step=record("step"))
    torch.testing.assert_close(block, stepped, atol=ATOL, rtol=ATOL)
    for a, b in zip(after_compress["block"], after_compress["step"], strict=True):
        assert a.shape[-1] == budget and torch.equal(a, b)
    assert any((a != torch.arange(CONTEXT - budget, CONTEXT)).any() for a in after_compress["block"])
    for a, b in zip(block_caches, step_caches, strict=True):
        assert len(a) == budget + T - CONTEXT and torch.equal(a.positions, b.positions)


def _batch(length, context, n=3, seed=1):
    inputs = torch.randint(3, 512, (n, length), generator=torch.Generator().manual_seed(seed))
    return Batch(inputs, inputs.roll(-1, 1), torch.full((n,), context))


@pytest.mark.parametrize("arch", ["qwen3_next", "lfm2"])
def test_hybrids_evict_only_their_attention_layers(arch):
    model = load_model(f"tiny:{arch}")
    attention = model.hf_config.layer_types.count("full_attention")
    assert 0 < attention < model.hf_config.num_hidden_layers
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, state = model.prefill(ids)
    parts = cache_numel_parts(state.cache)
    kv_per_token = parts["kv"] // 12  # over all attention layers
    recurrent = parts["conv"] + parts["recurrent"]
    assert recurrent > 0 and kv_per_token > 0

    state, caches = evicting_state(model, 2, make_policy("window"), 12, "continuous")
    assert len(caches) == attention
    layers = state.cache.layers
    held = [i for i, layer in enumerate(layers) if any(getattr(layer, "kv", None) is c for c in caches)]
    assert held == [i for i, kind in enumerate(model.hf_config.layer_types) if kind == "full_attention"]
    with torch.no_grad():
        logits, _ = model.prefill(ids, state=state)
        torch.testing.assert_close(logits, model(ids), atol=ATOL, rtol=ATOL)  # budget = length: no change

    budget = 4
    predictions, info = evaluate_with_policy(model, _batch(12, 8), "window", budget)
    assert predictions.shape == (3, 12) and info["budget_tokens"] == budget
    assert info["state_size"] == recurrent + kv_per_token * budget
    kept = []
    run_policy(model, ids, "window", budget, after_step=lambda t, c: kept.append([x.positions for x in c]))
    assert all((p == torch.arange(8, 12)).all() for p in kept[-1])


def test_eviction_on_a_model_without_attention_is_a_clear_value_error():
    model = load_model("tiny:mamba")
    with pytest.raises(ValueError, match="softmax attention layers.*has none"):
        evicting_state(model, 1, make_policy("window"), 4, "continuous")
    with pytest.raises(ValueError, match="has none"):
        rk.evaluate(model, _batch(8, 4), policy="h2o", budget=2)


def test_eviction_on_layers_holding_attention_and_ssm_state_keeps_the_ssm_state():
    model = load_model("tiny:falcon_h1")  # every layer: attention and Mamba-2 side by side
    ids = torch.randint(3, 512, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, plain = model.prefill(ids)
        state, caches = evicting_state(model, 2, make_policy("window"), 12, "continuous")
        logits, state = model.prefill(ids, state=state)
    assert len(caches) == model.hf_config.num_hidden_layers
    torch.testing.assert_close(logits, model(ids), atol=ATOL, rtol=ATOL)  # budget = length: no change
    held, full = cache_numel_parts(state.cache), cache_numel_parts(plain.cache)
    assert held == full and held["recurrent"] > 0 and held["conv"] > 0
    budget = 4
    _, info = evaluate_with_policy(model, _batch(12, 8), "window", budget)
    kv_per_token = full["kv"] // 12  # the parts are per sequence
    assert info["state_size"] == full["conv"] + full["recurrent"] + kv_per_token * budget
    kept = []
    run_policy(model, ids, "window", budget, after_step=lambda t, c: kept.append([x.positions for x in c]))
    assert all((p == torch.arange(8, 12)).all() for p in kept[-1])


@pytest.mark.parametrize("mode", ["continuous", "prefill"])
def test_a_sliding_window_model_evicts_inside_its_window(mode):
    """Mistral passes its window (8) to the attention function, not as a module attribute: the
    evicting attention masks by it, holds and counts at most the W - 1 tokens transformers' own
    sliding cache holds, and under ``full`` equals the plain model token for token."""
    model = load_model("tiny:mistral")
    ids = torch.randint(3, 512, (2, 21), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids)
        state, caches = evicting_state(model, 2, make_policy("full"), None, mode)
        logits, state = model.prefill(ids, state=state)
    torch.testing.assert_close(logits, expected, atol=ATOL, rtol=ATOL)
    assert sum(cache.numel() for cache in caches) // 2 == model.state_size(21)
    predictions, info = evaluate_with_policy(model, _batch(21, 12), "full", 1.0, mode=mode)
    assert info["state_size"] == model.state_size(21)
    _, info = evaluate_with_policy(model, _batch(21, 12), "h2o", 10, mode=mode)  # budget > W - 1 = 7
    assert info["state_size"] <= model.state_size(21)
