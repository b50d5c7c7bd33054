"""Set disjointness (JRT, arXiv 2407.05483): oracle, one shared element, layout, slices, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.tasks import IGNORE_INDEX, Batch


def parse_sets(tokens: list[int], start: int, sep: int) -> tuple[list[int], list[int]]:
    """The sets A and B of the last ``start A sep B`` copy in ``tokens`` (a context, maybe repeated)."""
    last = len(tokens) - 1 - tokens[::-1].index(start)
    body = tokens[last + 1 :]
    cut = body.index(sep)
    return body[:cut], body[cut + 1 :]


def oracle(batch: Batch, start: int = 1, sep: int = 2, answer_sep: int = 3) -> torch.Tensor:
    """At every ``answer_sep`` input, answer the element both preceding sets contain: predictions (N, T)."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        for t, token in enumerate(row):
            if token == answer_sep:
                a, b = parse_sets(row[:t], start, sep)
                (predictions[i, t],) = set(a) & set(b)
    return predictions


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"set_sizes": (5, 5)},
        {"set_sizes": [(1, 1), (1, 9), (9, 1), (3, 7)]},
        {"set_sizes": (6, 20), "vocab_size": 8192, "seq_len": 40},  # several sampling chunks
    ],
)
def test_oracle_solves_every_example(fields):
    task = rk.make_task("set_disjointness", **{"vocab_size": 64, "seq_len": 32, **fields})
    batch = task.generate(num_examples=1000, seed=0)
    scored = batch.labels != IGNORE_INDEX
    assert (scored.sum(1) == 1).all()
    assert (oracle(batch)[scored] == batch.labels[scored]).all()


def test_layout_sets_and_slices():
    task = rk.make_task("set_disjointness", vocab_size=40, seq_len=30, set_sizes=[(3, 12), (12, 3), (7, 7)])
    batch = task.generate(900, seed=1)
    special = {0, 1, 2, 3}
    seen_long_first = set()
    for i, row in enumerate(batch.inputs.tolist()):
        P = int(batch.prefix_len[i])
        a, b = parse_sets(row[:P], start=1, sep=2)
        assert row[0] == 1 and len(a) + len(b) + 2 == P
        assert len(set(a)) == len(a) and len(set(b)) == len(b)  # distinct within each set
        assert not (set(a) | set(b)) & special
        (shared,) = set(a) & set(b)  # exactly one element in common
        assert row[P] == 3 and set(row[P + 1 :]) <= {0}  # answer_sep, then filler only: no answer leak
        assert batch.labels[i].tolist() == [IGNORE_INDEX] * P + [shared] + [IGNORE_INDEX] * (30 - P - 1)
        size_a, size_b = int(batch.slices["size_a"][i]), int(batch.slices["size_b"][i])
        assert (size_a, size_b) == (len(a), len(b))
        assert int(batch.slices["long_first"][i]) == int(size_a > size_b)
        seen_long_first.add(size_a > size_b)
    assert seen_long_first == {True, False}  # short-first and long-first both generated
    assert sorted(torch.unique(batch.slices["size_a"]).tolist()) == [3, 7, 12]
    assert (torch.bincount(batch.slices["size_a"])[[3, 7, 12]] == 300).all()  # even split


def test_shared_element_sits_anywhere_in_both_sets():
    a, b = 4, 6
    task = rk.make_task("set_disjointness", vocab_size=64, seq_len=16, set_sizes=(a, b))
    batch = task.generate(2000, seed=2)
    shared = batch.labels[:, a + b + 2]
    in_a = (batch.inputs[:, 1 : a + 1] == shared[:, None]).nonzero()[:, 1]
    in_b = (batch.inputs[:, a + 2 : a + b + 2] == shared[:, None]).nonzero()[:, 1]
    assert len(in_a) == len(in_b) == len(batch)
    assert set(in_a.tolist()) == set(range(a)) and set(in_b.tolist()) == set(range(b))
    assert len(set(shared.tolist())) > 40  # the answer varies over the element tokens


def test_custom_special_tokens():
    specials = {"filler_token": 9, "start_token": 5, "sep_token": 0, "answer_sep_token": 12}
    task = rk.make_task("set_disjointness", vocab_size=13, seq_len=14, set_sizes=(4, 5), **specials)
    batch = task.generate(300, seed=3)
    assert (oracle(batch, start=5, sep=0, answer_sep=12)[batch.labels != IGNORE_INDEX] ==
            batch.labels[batch.labels != IGNORE_INDEX]).all()
    elements = batch.inputs[:, 1:5]
    assert not torch.isin(elements, torch.tensor(list(specials.values()))).any()
    assert (batch.inputs[:, -2:] == 9).all()  # right padding with the filler


def test_determinism_per_seed_and_global_rng_untouched():
    task = rk.make_task("set_disjointness", vocab_size=64, seq_len=32)
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    a, b, c = task.generate(50, seed=7), task.generate(50, seed=7), task.generate(50, seed=8)
    assert (torch.rand(1), np.random.rand()) == expected
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_single_pair_and_pair_list_round_trip_through_json():
    for sizes in [(3, 5), [(3, 5), (5, 3)]]:
        task = rk.make_task("set_disjointness", vocab_size=32, seq_len=16, set_sizes=sizes)
        assert type(task).model_validate_json(task.model_dump_json()) == task


def test_max_prefix_len_is_reached():
    task = rk.make_task("set_disjointness", vocab_size=64, seq_len=32, set_sizes=[(2, 3), (10, 4)])
    assert task.max_prefix_len() == 16 == int(task.generate(10, seed=0).prefix_len.max())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"set_sizes": (16, 16)}, "needs seq_len >= |A|+|B|+3 = 35; got seq_len=32"),
        ({"set_sizes": (10, 10), "vocab_size": 20}, "has only 16 element tokens (4 are special)"),
        ({"set_sizes": (0, 4)}, "set_sizes must be a (|A|, |B|) pair of sizes >= 1"),
        ({"set_sizes": []}, "set_sizes must be a (|A|, |B|) pair of sizes >= 1"),
        ({"sep_token": 1}, "must be 4 distinct ids in [0, vocab_size=64)"),
        ({"answer_sep_token": 64}, "must be 4 distinct ids in [0, vocab_size=64)"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_impossible_sizes_are_rejected_clearly(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("set_disjointness", **{"vocab_size": 64, "seq_len": 32, **fields})


def test_docstring_worked_example_is_true():
    batch = rk.make_task("set_disjointness", vocab_size=12, seq_len=10, set_sizes=(2, 4)).generate(1, seed=0)
    assert batch.inputs.tolist() == [[1, 7, 6, 2, 5, 4, 7, 10, 3, 0]]
    assert batch.labels.tolist() == [[-100] * 8 + [7, -100]]
    assert batch.prefix_len.tolist() == [8]
