"""The 2026 synthetic suite (issue 24): oracles written from each task's definition, worked examples,
slices, task-specific invariants and one-line errors for impossible sizes."""

from __future__ import annotations

import math
import re

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.tasks import IGNORE_INDEX, read_twice


def scored_equal(batch, predictions) -> bool:
    scored = batch.labels != IGNORE_INDEX
    return bool(scored.any(1).all() and (predictions[scored] == batch.labels[scored]).all())


# forgetting_mqar ------------------------------------------------------------------------------------------


def forgetting_oracle(batch) -> torch.Tensor:
    """Read the context's ``key value`` statements left to right, a later one replacing an earlier one,
    and answer every token after the context that is a key with that key's last value."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        latest: dict[int, int] = {}
        for j in range(0, P, 2):
            latest[row[j]] = row[j + 1]
        for t in range(P, len(row)):
            predictions[i, t] = latest.get(row[t], -1)
    return predictions


FORGETTING = [
    {"vocab_size": 64, "seq_len": 48, "num_kv_pairs": 6, "num_updates": 3},
    {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 6, "num_updates": 6, "max_overwrites": 3},
]


@pytest.mark.parametrize("fields", FORGETTING)
def test_forgetting_oracle_scores_one_and_reads_the_last_value(fields):
    task = rk.make_task("forgetting_mqar", **fields)
    batch = task.generate(200, seed=0)
    assert scored_equal(batch, forgetting_oracle(batch))
    # the label is the last value: the FIRST one is right on keys never overwritten, wrong on all others
    stale_wrong = 0
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        first = {}
        for j in range(0, P, 2):
            first.setdefault(row[j], row[j + 1])
        for t in (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist():
            if batch.slices["overwrites"][i] > 0:
                stale_wrong += first[row[t]] != int(batch.labels[i, t])
            else:
                assert first[row[t]] == int(batch.labels[i, t])
    assert stale_wrong == int((batch.labels[batch.slices["overwrites"] > 0] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("fields", FORGETTING)
def test_forgetting_slice_counts_the_queried_keys_overwrites(fields):
    task = rk.make_task("forgetting_mqar", **fields)
    batch = task.generate(120, seed=1)
    n, u, m = task.num_kv_pairs, task.num_updates, task.max_overwrites
    overwrites = batch.slices["overwrites"]
    # the classes 0..m split the examples evenly
    assert torch.bincount(overwrites).tolist() == [120 // (m + 1)] * (m + 1)
    for i, row in enumerate(batch.inputs.tolist()):
        context = row[: 2 * (n + u)]
        keys = context[0::2]
        statements = {k: keys.count(k) for k in keys}
        assert len(statements) == n and max(statements.values()) <= m + 1  # n keys, at most m overwrites
        assert len(set(context[1::2])) == n + u  # every value distinct
        queried = [row[t] for t in (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()]
        # every key overwritten exactly `overwrites` times is queried once, and no other key
        assert sorted(queried) == sorted(k for k, c in statements.items() if c - 1 == overwrites[i])


def test_forgetting_docstring_worked_example_is_true():
    task = rk.make_task("forgetting_mqar", vocab_size=16, seq_len=12, num_kv_pairs=2, num_updates=1)
    batch = task.generate(2, seed=0)
    dot = IGNORE_INDEX
    assert batch.inputs.tolist() == [[6, 10, 5, 8, 5, 9, 0, 0, 6, 0, 0, 0],
                                     [5, 11, 7, 14, 5, 10, 0, 0, 5, 0, 0, 0]]
    assert batch.labels.tolist() == [[dot] * 8 + [10, dot, dot, dot]] * 2
    assert batch.prefix_len.tolist() == [6, 6] and batch.slices["overwrites"].tolist() == [0, 1]


def test_forgetting_read_twice_repeats_the_context_with_its_updates():
    task = rk.make_task("forgetting_mqar", vocab_size=64, seq_len=48, num_kv_pairs=6, num_updates=3)
    inner, twice = task.generate(50, seed=2), read_twice(task).generate(50, seed=2)
    C = 18
    assert torch.equal(twice.inputs[:, :C], twice.inputs[:, C : 2 * C])
    assert torch.equal(twice.inputs[:, C:], inner.inputs) and torch.equal(twice.labels[:, C:], inner.labels)
    assert scored_equal(twice, forgetting_oracle(twice))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_kv_pairs": 4, "num_updates": 4}, "needs max_overwrites <= num_updates <= "),
        ({"num_kv_pairs": 4, "num_updates": 1, "max_overwrites": 2}, "= 2..6; got num_updates=1"),
        ({"num_kv_pairs": 8, "num_updates": 4, "seq_len": 39}, "seq_len >= 2*(num_kv_pairs+num_updates)"),
        ({"num_kv_pairs": 8, "num_updates": 4, "vocab_size": 20}, "use vocab_size >= 23"),
        ({"num_kv_pairs": 1, "num_updates": 1}, "greater than or equal to 2"),
    ],
)
def test_forgetting_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("forgetting_mqar", **{"vocab_size": 64, "seq_len": 64, **fields})


# compositional_mqar ---------------------------------------------------------------------------------------


def compositional_oracle(batch) -> torch.Tensor:
    """Read the context's ``k1 k2 value`` triples and answer the second token of every later ``k1 k2``
    pair found among them with its value."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        value_of = {(row[j], row[j + 1]): row[j + 2] for j in range(0, P, 3)}
        for t in range(P + 1, len(row)):
            predictions[i, t] = value_of.get((row[t - 1], row[t]), -1)
    return predictions


COMPOSITIONAL = [
    {"vocab_size": 48, "seq_len": 24, "num_kv_pairs": 4},
    {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 9, "power_a": 1.0},
]


@pytest.mark.parametrize("fields", COMPOSITIONAL)
def test_compositional_oracle_scores_one_and_every_pair_is_queried_once(fields):
    task = rk.make_task("compositional_mqar", **fields)
    batch = task.generate(200, seed=0)
    assert scored_equal(batch, compositional_oracle(batch))
    n = task.num_kv_pairs
    assert ((batch.labels != IGNORE_INDEX).sum(1) == n).all() and (batch.slices["num_kv_pairs"] == n).all()
    for i, row in enumerate(batch.inputs.tolist()):
        triples = {(row[j], row[j + 1]) for j in range(0, 3 * n, 3)}
        scored = (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
        asked = {(row[t - 1], row[t]) for t in scored}
        assert asked == triples and len(triples) == n


@pytest.mark.parametrize("fields", COMPOSITIONAL)
def test_compositional_no_single_half_determines_the_value(fields):
    """Within every sequence each k1 goes with g values (one per k2) and each k2 with g values: a model
    reading one half cannot do better than 1/g."""
    task = rk.make_task("compositional_mqar", **fields)
    batch = task.generate(100, seed=1)
    g, V = task.grid_size, task.vocab_size
    for row in batch.inputs.tolist():
        triples = [row[j : j + 3] for j in range(0, 3 * g * g, 3)]
        by_k1, by_k2 = {}, {}
        for k1, k2, v in triples:
            assert 1 <= k1 < V // 3 <= k2 < 2 * (V // 3) <= v < V
            by_k1.setdefault(k1, set()).add(v)
            by_k2.setdefault(k2, set()).add(v)
        assert len(by_k1) == len(by_k2) == g
        assert all(len(values) == g for values in [*by_k1.values(), *by_k2.values()])
        assert len({v for _, _, v in triples}) == g * g


def test_compositional_docstring_worked_example_is_true():
    batch = rk.make_task("compositional_mqar", vocab_size=15, seq_len=24, num_kv_pairs=4).generate(1, seed=0)
    dot = IGNORE_INDEX
    assert batch.inputs.tolist() == [[3, 9, 10, 4, 7, 12, 3, 7, 14, 4, 9, 11,
                                      4, 7, 0, 4, 9, 0, 3, 9, 0, 3, 7, 0]]
    assert batch.labels.tolist() == [[dot] * 13 + [12, dot, dot, 11, dot, dot, 10, dot, dot, 14, dot]]
    assert batch.prefix_len.tolist() == [12]


def test_compositional_read_twice():
    task = rk.make_task("compositional_mqar", vocab_size=48, seq_len=24, num_kv_pairs=4)
    twice = read_twice(task).generate(50, seed=2)
    assert torch.equal(twice.inputs[:, :12], twice.inputs[:, 12:24]) and (twice.prefix_len == 24).all()
    assert scored_equal(twice, compositional_oracle(twice))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_kv_pairs": 8}, "needs num_kv_pairs = g^2"),
        ({"num_kv_pairs": 1}, "greater than or equal to 4"),
        ({"num_kv_pairs": 9, "seq_len": 53}, "needs seq_len >= 6*num_kv_pairs = 54"),
        ({"num_kv_pairs": 9, "vocab_size": 22}, "use vocab_size=23 (the next that fits; the smallest is 23)"),
    ],
)
def test_compositional_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("compositional_mqar", **{"vocab_size": 64, "seq_len": 64, **fields})


# selective_copy -------------------------------------------------------------------------------------------

NOISE, COPY = 0, 1


def selective_copy_oracle(batch) -> torch.Tensor:
    """The non-noise tokens before the copy token, in order, predicted from the copy token on."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        at = row.index(COPY)
        data = [x for x in row[:at] if x != NOISE]
        span = min(len(data), len(row) - at)
        predictions[i, at : at + span] = torch.tensor(data[:span], dtype=torch.long)
    return predictions


SELECTIVE = [
    {"vocab_size": 12, "seq_len": 50, "min_len": 1, "max_len": 10, "noise_per_token": 3},
    {"vocab_size": 4, "seq_len": 48, "min_len": 8, "max_len": 8, "noise_per_token": 4},
]


@pytest.mark.parametrize("fields", SELECTIVE)
def test_selective_copy_oracle_scores_one_and_the_layout_is_as_documented(fields):
    task = rk.make_task("selective_copy", **fields)
    batch = task.generate(200, seed=0)
    assert scored_equal(batch, selective_copy_oracle(batch))
    k = task.noise_per_token
    for i, row in enumerate(batch.inputs.tolist()):
        L = int(batch.slices["length"][i])
        R = L * (1 + k)
        assert task.min_len <= L <= task.max_len and int(batch.prefix_len[i]) == R and row[R] == COPY
        region = row[:R]
        assert sum(x != NOISE for x in region) == L
        assert all(2 <= x < task.vocab_size or x == NOISE for x in region)
        assert all(x == NOISE for x in row[R + 1 :])  # the answer slots and the padding are blank
        assert (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist() == list(range(R, R + L))


def test_selective_copy_data_positions_are_spread_over_the_region():
    batch = rk.make_task("selective_copy", vocab_size=12, seq_len=40, min_len=8, max_len=8,
                         noise_per_token=3).generate(2000, seed=3)
    share = (batch.inputs[:, :32] != NOISE).float().mean(0)  # each region position holds data w.p. 1/4
    assert (share - 0.25).abs().max() < 0.05


def test_selective_copy_length_axis():
    task = rk.make_task("selective_copy", **SELECTIVE[0])
    longer = task.at_length(25)
    assert longer.seq_len == 25 * 5 and longer.max_prefix_len() == 100
    assert longer.bits_per_unit() == task.bits_per_unit() == math.log2(10)
    batch = longer.generate(30, seed=1)
    assert (batch.slices["length"] == 25).all() and (batch.labels[:, -1] != IGNORE_INDEX).all()
    assert scored_equal(batch, selective_copy_oracle(batch))


def test_selective_copy_docstring_worked_example_is_true():
    task = rk.make_task("selective_copy", vocab_size=8, seq_len=12, min_len=3, max_len=3, noise_per_token=2)
    batch = task.generate(1, seed=2)
    assert batch.inputs.tolist() == [[0, 0, 7, 3, 0, 0, 0, 2, 0, 1, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 9 + [7, 3, 2]]
    assert batch.prefix_len.tolist() == [9] and batch.slices["length"].tolist() == [3]


def test_selective_copy_read_twice():
    task = rk.make_task("selective_copy", **SELECTIVE[0])
    inner, twice = task.generate(40, seed=4), read_twice(task).generate(40, seed=4)
    assert torch.equal(twice.prefix_len, 2 * inner.prefix_len)
    for i in range(40):
        P = int(inner.prefix_len[i])
        assert torch.equal(twice.inputs[i, :P], twice.inputs[i, P : 2 * P])
        assert torch.equal(twice.inputs[i, P : P + task.seq_len], inner.inputs[i])
    assert scored_equal(twice, selective_copy_oracle(twice))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_len": 5, "max_len": 4}, "needs min_len <= max_len; got 5 > 4"),
        ({"vocab_size": 3}, "needs vocab_size >= 4"),
        ({"max_len": 10, "seq_len": 49}, "needs seq_len >= max_len*(noise_per_token+2) = 50"),
        ({"noise_per_token": 0}, "greater than or equal to 1"),
    ],
)
def test_selective_copy_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("selective_copy", **{"vocab_size": 12, "seq_len": 80, **fields})
