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
