"""KVCache.fork: one prefill-mode reading serves every policy and budget exactly as its own run would."""

import pytest
import torch

from recallkit.kv import KVCache, make_policy
from tests.cases import POLICY_CASES, policy_id

B, H, D, CONTEXT, DECODED = 2, 3, 4, 20, 3


def _stream(seed: int):
    """Keys, values and causal attention rows for CONTEXT + DECODED tokens: (B, H, T, D) and
    per token t a (B, H, 1, t + 1) distribution, as an attention layer would hand them over."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(B, H, CONTEXT + DECODED, D, generator=g)
    values = torch.randn(B, H, CONTEXT + DECODED, D, generator=g)
    scores = torch.randn(B, H, CONTEXT + DECODED, CONTEXT + DECODED, generator=g)
    return keys, values, scores


def _read(cache: KVCache, keys, values, scores) -> KVCache:
    """The context into ``cache`` in one block (as a prefill does), not yet compressed."""
    cache.append(keys[:, :, :CONTEXT], values[:, :, :CONTEXT])
    causal = torch.ones(CONTEXT, CONTEXT, dtype=torch.bool).tril()
    return cache.observe(scores[:, :, :CONTEXT, :CONTEXT].masked_fill(~causal, float("-inf")).softmax(-1))


def _decode(cache: KVCache, keys, values, scores) -> KVCache:
    """DECODED tokens after the compressed context, each attending to what is held."""
    cache.compress()
    for t in range(CONTEXT, CONTEXT + DECODED):
        cache.append(keys[:, :, t : t + 1], values[:, :, t : t + 1])
        cache.observe(scores[:, :, t : t + 1].gather(-1, cache.positions[:, :, None, :]).softmax(-1))
    return cache


def _same(a: KVCache, b: KVCache) -> None:
    for name in ("key", "value", "positions", "accumulated", "last", "recent"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert torch.equal(x, y), name
    assert (a.seen, len(a), a.peak) == (b.seen, len(b), b.peak)


@pytest.mark.parametrize("policy", POLICY_CASES, ids=policy_id)
@pytest.mark.parametrize("budget", [1, 7, CONTEXT])
def test_a_fork_of_a_recording_read_is_the_policys_own_run(policy, budget):
    keys, values, scores = _stream(0)
    policy = make_policy(policy)
    alone = _read(KVCache(policy, budget, "prefill", seed=3), keys, values, scores)
    alone = _decode(alone, keys, values, scores)
    recording = _read(KVCache(make_policy("full"), None, "prefill", seed=9, history=32), keys, values, scores)
    before = {name: getattr(recording, name).clone() for name in ("key", "value", "recent", "accumulated")}
    for _ in range(2):  # the recording is left as it was: it can be forked again
        forked = _decode(recording.fork(policy, budget, seed=3), keys, values, scores)
        _same(forked, alone)
        assert all(torch.equal(getattr(recording, name), value) for name, value in before.items())
        assert not recording.compressed and len(recording) == CONTEXT


def test_fork_refuses_what_it_cannot_reproduce():
    keys, values, scores = _stream(1)
    short = _read(KVCache(make_policy("full"), None, "prefill", history=4), keys, values, scores)
    with pytest.raises(ValueError, match="last 8 queries, this cache recorded 4"):
        short.fork(make_policy("snapkv"), 5)
    short.compress()
    with pytest.raises(ValueError, match="not compressed yet"):
        short.fork(make_policy("window"), 5)
    continuous = KVCache(make_policy("window"), 4, "continuous")
    with pytest.raises(ValueError, match="prefill-mode"):
        continuous.fork(make_policy("window"), 5)
