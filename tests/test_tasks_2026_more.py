"""The 2026 synthetic suite, continued (issue 24): state tracking, variable tracking, needles among
distractors, noisy and fuzzy recall, counting. Oracles written from each task's definition (not through
the generators' helpers), worked examples, slices, length axes, read_twice and one-line errors."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.tasks import IGNORE_INDEX, read_twice
from recallkit.tasks import niah
from recallkit.tasks.niah import NiahConfig
from tests.test_tasks_2026 import scored_equal

DOT = IGNORE_INDEX

# state_tracking -------------------------------------------------------------------------------------------

S5 = list(itertools.permutations(range(5)))  # token 1 + i is S5[i], lexicographic order


def state_tracking_oracle(batch) -> torch.Tensor:
    """Multiply the elements read so far: parity sums bits mod 2 (tokens 1, 2 = bits 0, 1); S5 composes
    the permutations as functions, s_t[i] = s_(t-1)[x_t[i]], from the identity. Predicts at every
    non-padding position; the group is read off the tokens (any token above 2 means S5)."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        s5 = max(row) > 2
        state = (0, 1, 2, 3, 4) if s5 else 0
        for t, token in enumerate(row):
            if token == 0:
                break
            if s5:
                x = S5[token - 1]
                state = tuple(state[x[j]] for j in range(5))
                predictions[i, t] = S5.index(state) + 1
            else:
                state = (state + token - 1) % 2
                predictions[i, t] = state + 1
    return predictions


STATE_TRACKING = [
    {"vocab_size": 3, "seq_len": 24, "group": "parity", "min_len": 1, "max_len": 24},
    {"vocab_size": 128, "seq_len": 20, "group": "s5", "min_len": 4, "max_len": 16},
]


@pytest.mark.parametrize("fields", STATE_TRACKING)
def test_state_tracking_oracle_scores_one_and_every_element_is_scored(fields):
    task = rk.make_task("state_tracking", **fields)
    batch = task.generate(200, seed=0)
    if task.group == "s5":  # the S5 oracle needs some token above 2 to tell the groups apart
        assert (batch.inputs.max(1).values > 2).all()
    assert scored_equal(batch, state_tracking_oracle(batch))
    lengths = batch.slices["length"]
    assert lengths.min() >= task.min_len and lengths.max() <= task.max_len and (batch.prefix_len == 0).all()
    t = torch.arange(task.seq_len)[None]
    assert torch.equal(batch.labels != IGNORE_INDEX, t < lengths[:, None])
    assert torch.equal(batch.inputs != 0, t < lengths[:, None])
    assert batch.inputs.max() <= task.group_size


def test_state_tracking_s5_is_not_commutative_and_uses_the_whole_group():
    """The label is the ordered product: reversing the elements changes it in most examples; every one
    of the 120 permutations occurs as an input."""
    batch = rk.make_task("state_tracking", **STATE_TRACKING[1]).generate(300, seed=5)
    assert len(set(batch.inputs[batch.inputs > 0].tolist())) == 120
    differ = 0
    for i, row in enumerate(batch.inputs.tolist()):
        xs = [S5[x - 1] for x in row if x]
        backwards = (0, 1, 2, 3, 4)
        for x in reversed(xs):
            backwards = tuple(backwards[x[j]] for j in range(5))
        differ += S5.index(backwards) + 1 != int(batch.labels[i, len(xs) - 1])
    assert differ > 250


def test_state_tracking_length_axis_and_read_twice():
    task = rk.make_task("state_tracking", **STATE_TRACKING[1])
    longer = task.at_length(64)
    assert longer.seq_len == 64 and longer.length_range() == (64, 64)
    assert longer.bits_per_unit() == task.bits_per_unit() == math.log2(120)
    batch = longer.generate(20, seed=1)
    assert (batch.slices["length"] == 64).all() and scored_equal(batch, state_tracking_oracle(batch))
    # no context: read twice repeats nothing and gives the same batch
    inner, twice = task.generate(30, seed=2), read_twice(task).generate(30, seed=2)
    assert torch.equal(twice.inputs, inner.inputs) and torch.equal(twice.labels, inner.labels)


def test_state_tracking_docstring_worked_example_is_true():
    batch = rk.make_task("state_tracking", vocab_size=3, seq_len=8, group="parity", min_len=6,
                         max_len=6).generate(1, seed=0)
    assert batch.inputs.tolist() == [[2, 2, 2, 1, 1, 1, 0, 0]]
    assert batch.labels.tolist() == [[2, 1, 2, 2, 2, 2, DOT, DOT]] and batch.prefix_len.tolist() == [0]
    batch = rk.make_task("state_tracking", vocab_size=121, seq_len=3, group="s5", min_len=3,
                         max_len=3).generate(1, seed=0)
    assert batch.inputs.tolist() == [[103, 77, 62]] and batch.labels.tolist() == [[103, 72, 81]]
    assert [S5[x - 1] for x in (103, 77, 62)] == [(4, 1, 0, 2, 3), (3, 0, 4, 1, 2), (2, 3, 0, 4, 1)]
    assert [S5[x - 1] for x in (72, 81)] == [(2, 4, 3, 1, 0), (3, 1, 2, 0, 4)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_len": 5, "max_len": 4}, "needs min_len <= max_len; got 5 > 4"),
        ({"group": "s5", "vocab_size": 120}, "over s5 needs vocab_size >= 1 + |G| = 121"),
        ({"vocab_size": 2}, "over parity needs vocab_size >= 1 + |G| = 3"),
        ({"max_len": 17}, "needs seq_len >= max_len = 17; got 16"),
        ({"group": "s4"}, "'parity' or 's5'"),
    ],
)
def test_state_tracking_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("state_tracking", **{"vocab_size": 128, "seq_len": 16, "max_len": 16, **fields})


# variable_tracking ----------------------------------------------------------------------------------------

QUERY, ASSIGN = 1, 2


def assignments(row: list[int], end: int) -> dict[int, int]:
    """Every statement ``target = source`` before ``end``: the tokens either side of an ``=``."""
    return {row[j - 1]: row[j + 1] for j in range(1, end - 1) if row[j] == ASSIGN}


def variable_tracking_oracle(batch) -> torch.Tensor:
    """After the context, the token after each query marker is a variable: follow its assignments back
    until a token that is not assigned (the value) and predict it there."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        assigned = assignments(row, P)
        for t in range(P, len(row) - 1):
            if row[t] == QUERY:
                x = row[t + 1]
                while x in assigned:
                    x = assigned[x]
                predictions[i, t + 1] = x
    return predictions


VARIABLE_TRACKING = [
    {"vocab_size": 64, "seq_len": 64, "num_chains": 2, "min_hops": 1, "max_hops": 4, "min_len": 4,
     "max_len": 24},
    {"vocab_size": 48, "seq_len": 40, "num_chains": 4, "min_hops": 2, "max_hops": 2, "min_len": 0,
     "max_len": 2},
]


@pytest.mark.parametrize("fields", VARIABLE_TRACKING)
def test_variable_tracking_oracle_scores_one_and_the_chains_are_as_documented(fields):
    task = rk.make_task("variable_tracking", **fields)
    batch = task.generate(120, seed=0)
    assert scored_equal(batch, variable_tracking_oracle(batch))
    hops, lengths, C, third = batch.slices["hops"], batch.slices["length"], task.num_chains, task.third
    classes = task.max_hops - task.min_hops + 1
    assert torch.bincount(hops - task.min_hops).tolist() == [120 // classes] * classes
    for i, row in enumerate(batch.inputs.tolist()):
        P, h, L = int(batch.prefix_len[i]), int(hops[i]), int(lengths[i])
        assert task.min_len <= L <= task.max_len and P == L + 3 * C * (h + 1)
        context = row[:P]
        statements = [j for j in range(P) if context[j] == ASSIGN]
        assert len(statements) == C * (h + 1)
        in_statement = {k for j in statements for k in (j - 1, j, j + 1)}
        noise = [x for k, x in enumerate(context) if k not in in_statement]
        assert len(noise) == L and all(3 <= x < 3 + third for x in noise)
        assigned = assignments(row, P)
        targets = [context[j - 1] for j in statements]
        assert len(set(targets)) == len(targets) and all(3 + third <= x < 3 + 2 * third for x in targets)
        values = [x for x in assigned.values() if x not in assigned]
        assert len(values) == len(set(values)) == C and all(x >= 3 + 2 * third for x in values)
        # every chain is stated in order: a variable is assigned after the variable it copies
        position = {context[j - 1]: j for j in statements}
        assert all(position[s] < position[t] for t, s in assigned.items() if s in assigned)
        # the query is the last variable of a chain of h hops
        scored = (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(scored) == 1 and row[scored[0] - 1] == QUERY and scored[0] == P + 1
        x, steps = row[scored[0]], 0
        while x in assigned:
            x, steps = assigned[x], steps + 1
        assert steps == h + 1  # h hops between the h + 1 variables, one more to the value
        assert row[scored[0]] not in assigned.values()  # nothing copies the queried variable


def test_variable_tracking_length_axis_and_read_twice():
    task = rk.make_task("variable_tracking", **VARIABLE_TRACKING[0])
    longer = task.at_length(100)
    assert longer.seq_len == 100 + 3 * 2 * 5 + 2 and longer.max_prefix_len() == 130
    assert longer.bits_per_unit() == task.bits_per_unit() == math.log2(20)
    batch = longer.generate(30, seed=1)
    assert (batch.slices["length"] == 100).all() and scored_equal(batch, variable_tracking_oracle(batch))
    inner, twice = task.generate(40, seed=4), read_twice(task).generate(40, seed=4)
    assert torch.equal(twice.prefix_len, 2 * inner.prefix_len)
    for i in range(40):
        P = int(inner.prefix_len[i])
        assert torch.equal(twice.inputs[i, :P], twice.inputs[i, P : 2 * P])
        assert torch.equal(twice.inputs[i, P : P + task.seq_len], inner.inputs[i])
    assert scored_equal(twice, variable_tracking_oracle(twice))


def test_variable_tracking_docstring_worked_example_is_true():
    batch = rk.make_task("variable_tracking", vocab_size=15, seq_len=20, num_chains=2, min_hops=1, max_hops=1,
                         min_len=4, max_len=4).generate(1, seed=0)
    assert batch.inputs.tolist() == [[6, 4, 7, 2, 11, 10, 2, 14, 6, 8, 2, 7, 9, 2, 10, 5, 1, 9, 0, 0]]
    assert batch.labels.tolist() == [[DOT] * 17 + [14, DOT, DOT]] and batch.prefix_len.tolist() == [16]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_hops": 3, "max_hops": 2}, "needs min_hops <= max_hops; got 3 > 2"),
        ({"min_len": 9, "max_len": 8}, "needs min_len <= max_len; got 9 > 8"),
        ({"vocab_size": 32}, "needs 10 variables in a third of [3, V); use vocab_size >= 33; got 32"),
        ({"seq_len": 39}, "needs seq_len >= max_len + 3*num_chains*(max_hops+1) + 2 = 40; got seq_len=39"),
        ({"num_chains": 0}, "greater than or equal to 1"),
    ],
)
def test_variable_tracking_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("variable_tracking", **{"vocab_size": 64, "seq_len": 64, "num_chains": 2, "max_hops": 4,
                                             "max_len": 8, **fields})


# niah -----------------------------------------------------------------------------------------------------


def niah_oracle(batch, key_len: int) -> torch.Tensor:
    """After the context, each query marker is followed by a key of ``key_len`` tokens: find every place
    the whole key occurs in the context, and predict the tokens after those places (the values), in
    context order, from the key's last token on."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        for t in range(P, len(row) - key_len):
            if row[t] == QUERY:
                key = row[t + 1 : t + 1 + key_len]
                values = [row[j + key_len] for j in range(P - key_len) if row[j : j + key_len] == key]
                end = min(t + key_len + len(values), len(row))
                answer = values[: end - t - key_len]
                predictions[i, t + key_len : end] = torch.tensor(answer, dtype=torch.long)
    return predictions


NIAH = [
    {"vocab_size": 32, "seq_len": 48, "key_len": 2, "num_distractors": 3, "min_len": 0, "max_len": 30},
    {"vocab_size": 40, "seq_len": 72, "key_len": 3, "num_queries": 2, "num_values": 2, "num_distractors": 4,
     "min_len": 8, "max_len": 24, "depth": 0.25},
]


def needles(row: list[int], P: int, task) -> list[tuple[tuple[int, ...], int, int]]:
    """The context's needles (key, value, noise tokens before it), found by the token ranges."""
    base, m, found, noise = 2 + task.third, task.key_len, [], 0
    j = 0
    while j < P:
        if row[j] < base:
            noise, j = noise + 1, j + 1
            continue
        key = tuple(row[j : j + m])
        assert all(base <= x < base + task.third for x in key) and row[j + m] >= base + task.third
        found.append((key, row[j + m], noise))
        j += m + 1
    return found


@pytest.mark.parametrize("fields", NIAH)
def test_niah_oracle_scores_one_and_the_needles_are_as_documented(fields):
    task = rk.make_task("niah", **fields)
    batch = task.generate(150, seed=0)
    assert scored_equal(batch, niah_oracle(batch, task.key_len))
    q, n, D, m = task.num_queries, task.num_values, task.num_distractors, task.key_len
    for i, row in enumerate(batch.inputs.tolist()):
        P, L = int(batch.prefix_len[i]), int(batch.slices["length"][i])
        found = needles(row, P, task)
        assert len(found) == q * n + D and P == L + (q * n + D) * (m + 1)
        assert sum(x < 2 + task.third for x in row[:P]) == L
        assert len({v for _, v, _ in found}) == len(found)  # every value distinct
        queried = [tuple(row[t + 1 : t + 1 + m]) for t in range(P, len(row)) if row[t] == QUERY]
        assert len(set(queried)) == q
        keys = [k for k, _, _ in found]
        assert all(keys.count(k) == n for k in queried)
        distractors = [k for k in keys if k not in queried]
        assert len(set(distractors)) == D  # distinct keys, each near one queried key: same prefix, other last
        assert all(any(k[:-1] == k0[:-1] and k[-1] != k0[-1] for k0 in queried) for k in distractors)
        gaps = [g for k, _, g in found if k in queried]
        if task.depth is not None:
            assert set(gaps) == {round(task.depth * L)}
        expected = 0 if L == 0 else math.floor(4 * min(gaps) / L + 0.5) * 25
        assert int(batch.slices["depth"][i]) == expected
    assert (batch.labels != IGNORE_INDEX).sum(1).eq(q * n).all()


def test_niah_uniform_depth_fills_every_bucket_and_distractors_are_needed():
    task = rk.make_task("niah", **NIAH[0])
    batch = task.generate(400, seed=2)
    assert sorted(set(batch.slices["depth"].tolist())) == [0, 25, 50, 75, 100]
    # an oracle matching only the key's first token would pick a distractor's value in many examples
    wrong = 0
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        t = row.index(QUERY, P)
        first = [row[j + 2] for j in range(P - 2) if row[j] == row[t + 1] and row[j + 1] >= 2 + task.third]
        wrong += first[0] != int(batch.labels[i, t + 2])
    assert wrong > 100


def test_niah_length_axis_and_read_twice():
    task = rk.make_task("niah", **NIAH[1])
    longer = task.at_length(100)
    assert longer.seq_len == 100 + 8 * 4 + 2 * 6 and longer.max_prefix_len() == 132
    assert longer.bits_per_unit() == task.bits_per_unit() == math.log2(12)
    batch = longer.generate(30, seed=1)
    assert (batch.slices["length"] == 100).all() and (batch.slices["depth"] == 25).all()
    assert scored_equal(batch, niah_oracle(batch, 3))
    inner, twice = task.generate(40, seed=4), read_twice(task).generate(40, seed=4)
    assert torch.equal(twice.prefix_len, 2 * inner.prefix_len)
    for i in range(40):
        P = int(inner.prefix_len[i])
        assert torch.equal(twice.inputs[i, :P], twice.inputs[i, P : 2 * P])
        assert torch.equal(twice.inputs[i, P : P + task.seq_len], inner.inputs[i])
    assert scored_equal(twice, niah_oracle(twice, 3))


def test_niah_docstring_worked_example_is_true():
    batch = rk.make_task("niah", vocab_size=14, seq_len=20, key_len=2, num_distractors=1, min_len=6,
                         max_len=6, depth=0.5).generate(1, seed=0)
    assert batch.inputs.tolist() == [[9, 7, 10, 2, 4, 4, 9, 8, 11, 5, 4, 4, 1, 9, 8, 11, 0, 0, 0, 0]]
    assert batch.labels.tolist() == [[DOT] * 14 + [11] + [DOT] * 5] and batch.prefix_len.tolist() == [12]
    assert batch.slices["depth"].tolist() == [50] and batch.slices["length"].tolist() == [6]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_len": 9, "max_len": 8}, "niah needs min_len <= max_len; got 9 > 8"),
        ({"num_distractors": 20}, "needs 21 key tokens and values in each third of [2, V); "
                                  "use vocab_size >= 65"),
        ({"seq_len": 23}, "num_queries*(1+key_len+num_values) = 24; got seq_len=23"),
        ({"key_len": 1}, "greater than or equal to 2"),
        ({"depth": 1.5}, "less than or equal to 1"),
    ],
)
def test_niah_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("niah", **{"vocab_size": 48, "seq_len": 64, "min_len": 0, "max_len": 8, **fields})


# noisy_recall, fuzzy_recall -------------------------------------------------------------------------------


def pair_recall_oracle(batch, noise_vocab_size: int, key_len: int = 1, value_len: int = 1) -> torch.Tensor:
    """Drop the padding and the noise tokens [1, 1 + noise_vocab_size): the context is then pairs of
    ``key_len`` key and ``value_len`` value tokens, and so are the queries after it; predict each query's
    value from its key's last token on (the key's value in the context)."""
    predictions = torch.full_like(batch.inputs, -1)
    unit = key_len + value_len
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        kept = [(t, x) for t, x in enumerate(row) if x > noise_vocab_size]
        context = [x for t, x in kept if t < P]
        value_of = {tuple(context[j : j + key_len]): context[j + key_len : j + unit]
                    for j in range(0, len(context), unit)}
        after = [(t, x) for t, x in kept if t >= P]
        for j in range(0, len(after) - unit + 1, unit):
            key = tuple(x for _, x in after[j : j + key_len])
            for k, v in enumerate(value_of.get(key, [])):
                predictions[i, after[j + key_len - 1 + k][0]] = v
    return predictions


NOISY = [
    {"vocab_size": 48, "seq_len": 64, "num_kv_pairs": 8, "frac_noise": [0.0, 0.2, 0.5],
     "noise_vocab_size": 16},
    {"vocab_size": 24, "seq_len": 80, "num_kv_pairs": 4, "frac_noise": 0.8, "noise_vocab_size": 4},
]
FUZZY = [
    {"vocab_size": 13, "seq_len": 64, "num_kv_pairs": 8, "key_len": 2, "value_len": 2,
     "noise_vocab_size": 2},
    {"vocab_size": 40, "seq_len": 80, "num_kv_pairs": 6, "key_len": 3, "value_len": 2,
     "frac_noise": [0.0, 0.25], "noise_vocab_size": 8},
]


PAIR_RECALL = [("noisy_recall", f) for f in NOISY] + [("fuzzy_recall", f) for f in FUZZY]


@pytest.mark.parametrize(("name", "fields"), PAIR_RECALL)
def test_pair_recall_oracle_scores_one_and_the_noise_is_as_documented(name, fields):
    task = rk.make_task(name, **fields)
    batch = task.generate(120, seed=0)
    a, b = getattr(task, "key_len", 1), getattr(task, "value_len", 1)
    assert scored_equal(batch, pair_recall_oracle(batch, task.noise_vocab_size, a, b))
    n, nv, fractions = task.num_kv_pairs, task.noise_vocab_size, task.fractions
    percents = [round(100 * f) for f in fractions]
    counts = torch.bincount(batch.slices["noise"], minlength=101)[percents]
    assert counts.tolist() == [120 // len(percents)] * len(percents)
    half = (task.vocab_size - 1 - nv) // 2
    for i, row in enumerate(batch.inputs.tolist()):
        f = int(batch.slices["noise"][i]) / 100
        m = round(f / (1 - f) * n * (a + b))
        P = int(batch.prefix_len[i])
        assert P == n * (a + b) + m
        for region in (row[:P], row[P : 2 * P]):
            assert sum(1 <= x <= nv for x in region) == m  # a fraction f of each region is noise
            clean = [x for x in region if x > nv]
            pairs = [tuple(clean[j : j + a + b]) for j in range(0, len(clean), a + b)]
            assert all(nv < x <= nv + half for p in pairs for x in p[:a])  # key tokens, then value tokens
            assert all(x > nv + half for p in pairs for x in p[a:])
            assert len({p[:a] for p in pairs}) == n  # n distinct keys, each stated (queried) once
        # noise never splits a pair: noise tokens are only at the boundaries between pairs
        for region, start in ((row[:P], 0), (row[P : 2 * P], P)):
            offset = 0
            for x in region:
                if 1 <= x <= nv:
                    assert offset % (a + b) == 0
                else:
                    offset += 1
        assert all(x == 0 for x in row[2 * P :])
        assert int((batch.labels[i] != IGNORE_INDEX).sum()) == n * b


def test_fuzzy_keys_share_tokens_so_only_the_whole_key_finds_the_value():
    task = rk.make_task("fuzzy_recall", **FUZZY[0])
    batch = task.generate(100, seed=1)
    shared = 0
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        keys = [tuple(row[j : j + 2]) for j in range(0, P, 4)]
        shared += len({k[0] for k in keys}) < len(keys) and len({k[1] for k in keys}) < len(keys)
    assert shared == 100  # 8 keys over 5 key tokens: both positions repeat in every example


def test_pair_recall_read_twice():
    for name, fields in (("noisy_recall", NOISY[0]), ("fuzzy_recall", FUZZY[1])):
        task = rk.make_task(name, **fields)
        inner, twice = task.generate(40, seed=4), read_twice(task).generate(40, seed=4)
        assert torch.equal(twice.prefix_len, 2 * inner.prefix_len)
        for i in range(40):
            P = int(inner.prefix_len[i])
            assert torch.equal(twice.inputs[i, :P], twice.inputs[i, P : 2 * P])
            assert torch.equal(twice.inputs[i, P : P + task.seq_len], inner.inputs[i])
        a, b = getattr(task, "key_len", 1), getattr(task, "value_len", 1)
        assert scored_equal(twice, pair_recall_oracle(twice, task.noise_vocab_size, a, b))
        assert not task.has_length_axis


def test_noisy_recall_docstring_worked_example_is_true():
    batch = rk.make_task("noisy_recall", vocab_size=12, seq_len=16, num_kv_pairs=2, frac_noise=0.5,
                         noise_vocab_size=4).generate(1, seed=0)
    assert batch.inputs.tolist() == [[4, 7, 10, 6, 9, 3, 3, 4, 7, 10, 1, 2, 6, 9, 4, 3]]
    assert batch.labels.tolist() == [[DOT] * 8 + [10, DOT, DOT, DOT, 9, DOT, DOT, DOT]]
    assert batch.prefix_len.tolist() == [8] and batch.slices["noise"].tolist() == [50]


def test_fuzzy_recall_docstring_worked_example_is_true():
    batch = rk.make_task("fuzzy_recall", vocab_size=13, seq_len=16, num_kv_pairs=2, key_len=2, value_len=2,
                         frac_noise=0.0, noise_vocab_size=2).generate(1, seed=0)
    assert batch.inputs.tolist() == [[7, 6, 9, 8, 5, 4, 8, 8, 7, 6, 9, 8, 5, 4, 8, 8]]
    assert batch.labels.tolist() == [[DOT] * 9 + [9, 8, DOT, DOT, 8, 8, DOT]]
    assert batch.prefix_len.tolist() == [8] and batch.slices["noise"].tolist() == [0]


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("noisy_recall", {"frac_noise": 1.0}, "frac_noise must be in [0, 1)"),
        ("noisy_recall", {"frac_noise": []}, "frac_noise must be in [0, 1)"),
        ("noisy_recall", {"vocab_size": 32}, "needs 8 distinct keys of 1 token(s)"),
        ("noisy_recall", {"vocab_size": 32}, "use vocab_size >= 33; got 32"),
        ("noisy_recall", {"seq_len": 39}, "seq_len >= 2 * (pair tokens + noise tokens) = 40; got seq_len=39"),
        ("fuzzy_recall", {"vocab_size": 22, "key_len": 2}, "use vocab_size >= 23; got 22"),
        ("fuzzy_recall", {"num_kv_pairs": 0}, "greater than or equal to 1"),
    ],
)
def test_pair_recall_impossible_sizes_are_one_line_errors(name, fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task(name, **{"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 8, "noise_vocab_size": 16,
                              **fields})


# counting -------------------------------------------------------------------------------------------------

ANSWER = 1


def counting_oracle(batch, top_k: int) -> torch.Tensor:
    """Count every token of the context and predict the ``top_k`` most frequent, most frequent first, from
    the answer marker on (ties broken by token id, which the task never needs)."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        counts: dict[int, int] = {}
        for x in row[:P]:
            counts[x] = counts.get(x, 0) + 1
        ranked = sorted(counts, key=lambda x: (-counts[x], x))[:top_k]
        predictions[i, P : P + top_k] = torch.tensor(ranked, dtype=torch.long)
    return predictions


COUNTING = [
    {"vocab_size": 32, "seq_len": 52, "top_k": 3, "rare_count": 2, "max_count": 8, "min_len": 24,
     "max_len": 48},
    {"vocab_size": 16, "seq_len": 12, "top_k": 1, "rare_count": 1, "max_count": 3, "min_len": 3,
     "max_len": 10},
]


@pytest.mark.parametrize("fields", COUNTING)
def test_counting_oracle_scores_one_and_the_answer_is_unique(fields):
    task = rk.make_task("counting", **fields)
    batch = task.generate(200, seed=0)
    assert scored_equal(batch, counting_oracle(batch, task.top_k))
    k, r = task.top_k, task.rare_count
    for i, row in enumerate(batch.inputs.tolist()):
        L = int(batch.slices["length"][i])
        assert task.min_len <= L <= task.max_len and int(batch.prefix_len[i]) == L and row[L] == ANSWER
        assert all(x >= 2 for x in row[:L]) and all(x == 0 for x in row[L + 1 + k :])
        counts = sorted(((row[:L].count(x), x) for x in set(row[:L])), reverse=True)
        top = [c for c, _ in counts[:k]]
        assert len(set(top)) == k and all(r < c <= task.max_count for c in top)  # distinct answer counts
        assert all(c <= r for c, _ in counts[k:])  # every other word at most rare_count times
        answer = [x for _, x in counts[:k]]
        assert row[L + 1 : L + 1 + k] == answer
        assert (batch.labels[i] != IGNORE_INDEX).nonzero().flatten().tolist() == list(range(L, L + k))


def test_counting_is_one_answer_span_for_greedy_generation():
    from recallkit.generation import answer_spans

    task = rk.make_task("counting", **COUNTING[0])
    batch = task.generate(20, seed=1)
    assert task.generative
    assert answer_spans(batch.labels) == [(L, L + 3) for L in batch.slices["length"].tolist()]
    assert answer_spans(read_twice(task).generate(20, seed=1).labels) == [
        (2 * L, 2 * L + 3) for L in batch.slices["length"].tolist()]


def test_counting_length_axis_and_read_twice():
    task = rk.make_task("counting", **COUNTING[0])
    longer = task.at_length(58)  # (32 - 2 - 3) * 2 + (3 + 4 + 5) = 66 is the most this vocabulary allows
    assert longer.seq_len == 62 and longer.vocab_size == 32 and longer.bits_per_unit() == task.bits_per_unit()
    batch = longer.generate(30, seed=1)
    assert (batch.slices["length"] == 58).all() and scored_equal(batch, counting_oracle(batch, 3))
    with pytest.raises(ValidationError, match=re.escape("= 33; got 32")):
        task.at_length(67)
    inner, twice = task.generate(40, seed=4), read_twice(task).generate(40, seed=4)
    assert torch.equal(twice.prefix_len, 2 * inner.prefix_len)
    for i in range(40):
        P = int(inner.prefix_len[i])
        assert torch.equal(twice.inputs[i, :P], twice.inputs[i, P : 2 * P])
        assert torch.equal(twice.inputs[i, P : P + task.seq_len], inner.inputs[i])
    assert scored_equal(twice, counting_oracle(twice, 3))


def test_counting_docstring_worked_example_is_true():
    batch = rk.make_task("counting", vocab_size=12, seq_len=16, top_k=2, rare_count=1, max_count=4,
                         min_len=12, max_len=12).generate(1, seed=0)
    assert batch.inputs.tolist() == [[8, 8, 10, 7, 5, 6, 6, 8, 3, 2, 6, 6, 1, 6, 8, 0]]
    assert batch.labels.tolist() == [[DOT] * 12 + [6, 8, DOT, DOT]] and batch.prefix_len.tolist() == [12]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_count": 4}, "max_count - rare_count >= top_k; got 4 - 2 < 3"),
        ({"min_len": 30, "max_len": 29}, "needs min_len <= max_len; got 30 > 29"),
        ({"min_len": 20}, "the top_k largest counts, 8 + 7 + .. = 21; got min_len=20"),
        ({"vocab_size": 22}, "ceil((max_len - smallest top_k counts)/rare_count) = 23; got 22"),
        ({"seq_len": 51}, "needs seq_len >= max_len + 1 + top_k = 52; got seq_len=51"),
        ({"top_k": 0}, "greater than or equal to 1"),
    ],
)
def test_counting_impossible_sizes_are_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("counting", **{**COUNTING[0], **fields})


# report panels ---------------------------------------------------------------------------------------------

def test_the_knob_each_task_is_about_gets_its_own_report_panel():
    # parity and S5, or 0 and 3 distractors, at the same length must not share a capability-map column
    parity = rk.make_task("state_tracking", vocab_size=128, seq_len=12, group="parity", min_len=2, max_len=12)
    s5 = rk.make_task("state_tracking", vocab_size=128, seq_len=12, group="s5", min_len=2, max_len=12)
    assert parity.setting == "state_tracking parity L=2-12" and s5.setting == "state_tracking s5 L=2-12"
    clean, distracted = (rk.make_task("niah", vocab_size=64, seq_len=64, num_distractors=n, min_len=16,
                                      max_len=48) for n in (0, 3))
    assert clean.setting == "niah 1 needle + 0 distractors T=64"
    assert distracted.setting == "niah 1 needle + 3 distractors T=64"
    assert read_twice(distracted).setting == distracted.setting


def _needle_gaps(cfg: NiahConfig, row: list[int], prefix: int) -> tuple[list[int], list[tuple[int, ...]]]:
    """Walk the context: (gap of each needle, its key), the gap being the noise tokens before it."""
    third, m = cfg.third, cfg.key_len
    gaps, keys, noise, i = [], [], 0, 0
    while i < prefix:
        if 2 <= row[i] < 2 + third:  # a noise token
            noise, i = noise + 1, i + 1
        else:  # a needle: m key tokens and a value
            gaps.append(noise)
            keys.append(tuple(row[i : i + m]))
            i += m + 1
    return gaps, keys


def test_the_depth_slice_is_the_earliest_queried_needle_with_random_depths():
    """depth=None puts each queried needle in its own random gap: the slice is the *earliest* one's
    gap g / L, to the nearest quarter, in percent (the docstring's definition)."""
    cfg = NiahConfig(vocab_size=26, seq_len=40, key_len=2, num_queries=2, num_values=1, num_distractors=1,
                     min_len=8, max_len=16, depth=None)
    batch = cfg.generate(300, seed=0)
    differs = 0
    for i in range(len(batch)):
        row, prefix = batch.inputs[i].tolist(), int(batch.prefix_len[i])
        L = int(batch.slices["length"][i])
        gaps, keys = _needle_gaps(cfg, row, prefix)
        queried = {tuple(row[j + 1 : j + 1 + cfg.key_len]) for j in range(prefix, len(row))
                   if row[j] == niah.QUERY}
        queried_gaps = [g for g, k in zip(gaps, keys) if k in queried]
        assert len(queried_gaps) == 2
        expected = math.floor(4 * min(queried_gaps) / L + 0.5) * 25
        assert int(batch.slices["depth"][i]) == expected
        differs += math.floor(4 * max(queried_gaps) / L + 0.5) * 25 != expected
    assert differs > 50  # the test tells the earliest needle from the latest


def test_distractors_land_in_every_gap_the_last_one_included():
    """With the queried needle at depth 0 (gap 0) and L = 2, the one distractor is uniform over the
    three gaps 0, 1, 2: a third of the contexts end with it (after the last noise token)."""
    cfg = NiahConfig(vocab_size=26, seq_len=20, key_len=2, num_distractors=1, min_len=2, max_len=2, depth=0.0)
    batch = cfg.generate(600, seed=0)
    counts = [0, 0, 0]
    for i in range(len(batch)):
        row, prefix = batch.inputs[i].tolist(), int(batch.prefix_len[i])
        gaps, keys = _needle_gaps(cfg, row, prefix)
        query_key = tuple(row[prefix + 1 : prefix + 1 + cfg.key_len])
        (distractor_gap,) = [g for g, k in zip(gaps, keys) if k != query_key]
        counts[distractor_gap] += 1
    assert all(150 <= c <= 250 for c in counts), counts  # 200 each expected; sd about 11.5
