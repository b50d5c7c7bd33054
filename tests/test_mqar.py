"""MQAR (DESIGN.md section 5): oracle, determinism, seeds, power law, distinct keys, fillers."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.tasks import IGNORE_INDEX, eval_seed, train_seed
from recallkit.tasks.mqar import query_slot_probs


def oracle(batch) -> torch.Tensor:
    """Answer every query by looking its key up in the context: predictions (N, T)."""
    predictions = torch.full_like(batch.inputs, -1)
    for i in range(len(batch)):
        context = batch.inputs[i, : batch.prefix_len[i]].tolist()
        value_of = {context[j]: context[j + 1] for j in range(0, len(context), 2)}
        for t in range(int(batch.prefix_len[i]), batch.inputs.shape[1]):
            predictions[i, t] = value_of.get(int(batch.inputs[i, t]), -1)
    return predictions


@pytest.mark.parametrize(
    "fields",
    [
        {"num_kv_pairs": 8},
        {"num_kv_pairs": [4, 8, 16], "seq_len": 128},
        {"num_kv_pairs": 8, "random_fillers": True},
        {"num_kv_pairs": 4, "num_passes": 2},
    ],
)
def test_oracle_solves_every_query(fields):
    task = rk.make_task("mqar", **{"vocab_size": 256, "seq_len": 64, **fields})
    batch = task.generate(num_examples=300, seed=0)
    scored = batch.labels != IGNORE_INDEX
    assert (oracle(batch)[scored] == batch.labels[scored]).all()
    # every key is queried exactly once: one label per pair
    assert (scored.sum(1) == batch.slices["num_kv_pairs"]).all()


def test_api_example_from_design_works_as_written():
    batch = rk.make_task("mqar", vocab_size=256, seq_len=64, num_kv_pairs=8).generate(num_examples=100,
                                                                                       seed=0)
    assert batch.inputs.shape == batch.labels.shape == (100, 64)
    assert (batch.prefix_len == 16).all()
    assert set(batch.slices) == {"num_kv_pairs"}


def test_keys_values_ranges_and_distinctness():
    V, n = 64, 12
    batch = rk.make_task("mqar", vocab_size=V, seq_len=128, num_kv_pairs=n).generate(500, seed=1)
    context = batch.inputs[:, : 2 * n]
    keys, values = context[:, 0::2], context[:, 1::2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    for row in range(len(batch)):
        assert len(set(keys[row].tolist())) == n and len(set(values[row].tolist())) == n
    labels = batch.labels[batch.labels != IGNORE_INDEX]
    assert ((labels >= V // 2) & (labels < V)).all()


def test_random_fillers_never_collide_with_the_examples_keys_or_values():
    n = 8
    batch = rk.make_task("mqar", vocab_size=32, seq_len=64, num_kv_pairs=n,
                         random_fillers=True).generate(400, seed=2)
    for row in range(len(batch)):
        pairs = set(batch.inputs[row, : 2 * n].tolist())
        after = batch.inputs[row, 2 * n :]
        is_query = batch.labels[row, 2 * n :] != IGNORE_INDEX
        fillers = set(after[~is_query].tolist())
        assert not fillers & pairs
        assert set(after[is_query].tolist()) <= pairs
    assert len(set(batch.inputs[:, 2 * n :].flatten().tolist())) > 5  # fillers really are random


def test_determinism_per_seed():
    task = rk.make_task("mqar", vocab_size=128, seq_len=64, num_kv_pairs=[4, 8], random_fillers=True)
    a, b, c = task.generate(50, seed=7), task.generate(50, seed=7), task.generate(50, seed=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_generation_does_not_touch_global_rng():
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    rk.make_task("mqar", vocab_size=128, seq_len=64, num_kv_pairs=4).generate(10, seed=3)
    assert (torch.rand(1), np.random.rand()) == expected


def test_train_and_test_seed_ranges_are_disjoint():
    train = {train_seed(s) for s in range(0, 2**31, 2**20)} | {train_seed(2**31 - 1)}
    test = {eval_seed(s) for s in range(0, 2**31, 2**20)} | {eval_seed(0)}
    assert max(train) < min(test)
    task = rk.make_task("mqar", vocab_size=256, seq_len=64, num_kv_pairs=8)
    train_rows = {tuple(r) for r in task.generate(500, train_seed(0)).inputs.tolist()}
    test_rows = {tuple(r) for r in task.generate(500, eval_seed(0)).inputs.tolist()}
    assert not train_rows & test_rows


def test_query_slots_follow_the_power_law():
    n, T, a = 4, 72, 0.01
    batch = rk.make_task("mqar", vocab_size=256, seq_len=T, num_kv_pairs=n,
                         power_a=a).generate(20_000, seed=0)
    positions = (batch.labels != IGNORE_INDEX).nonzero()[:, 1]
    slots = ((positions - 2 * n) // 2).numpy()
    num_slots = (T - 2 * n) // 2
    counts = np.bincount(slots, minlength=num_slots)
    # n draws without replacement flatten the marginal of p but keep it decreasing
    p = query_slot_probs(num_slots, a)
    assert counts[0] / len(batch) > p[0]  # P(slot 0 used) >= P(first draw = slot 0)
    head, tail = counts[: num_slots // 4].mean(), counts[-num_slots // 4 :].mean()
    assert head > 2.5 * tail
    # exact check on single-query examples: slot frequencies match p (chi-square, 0.1% level)
    single = rk.make_task("mqar", vocab_size=256, seq_len=T, num_kv_pairs=1,
                          power_a=a).generate(20_000, seed=1)
    s = (((single.labels != IGNORE_INDEX).nonzero()[:, 1] - 2) // 2).numpy()
    num_slots = (T - 2) // 2
    observed = np.bincount(s, minlength=num_slots)
    expected = query_slot_probs(num_slots, a) * len(s)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 70.0  # 34 degrees of freedom: p(chi2 > 70) < 0.001


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"seq_len": 30, "num_kv_pairs": 8}, "needs seq_len >= 2*num_kv_pairs*(num_passes+1) = 32"),
        ({"vocab_size": 16, "num_kv_pairs": 8}, "has only 7 keys"),
        ({"num_kv_pairs": 0}, "num_kv_pairs must be >= 1"),
        ({"num_kv_pairs": 8, "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_impossible_sizes_are_rejected_clearly(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task("mqar", **{"vocab_size": 256, "seq_len": 64, **fields})


def test_docstring_worked_example_is_true():
    batch = rk.make_task("mqar", vocab_size=8, seq_len=8, num_kv_pairs=2).generate(1, seed=0)
    assert batch.inputs.tolist() == [[3, 4, 2, 7, 3, 0, 2, 0]]
    assert batch.labels.tolist() == [[-100, -100, -100, -100, 4, -100, 7, -100]]
    assert batch.prefix_len.tolist() == [4]


def test_query_slots_stay_a_distribution_at_any_finite_power():
    """(g + 1)^(a - 1) overflows float64 at large a (NaN probabilities, numpy warnings, every example
    querying the same slots by accident); normalised in log space, p stays exact: at a = 1e6 all of
    the mass sits on the last slot, as the formula says."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a in (1e-3, 0.01, 1.0, 3.0, 300.0, 1e6):
            p = query_slot_probs(50, a)
            assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-12
            g = np.arange(1, 51, dtype=np.float64)
            if a < 100:
                np.testing.assert_allclose(p, g ** (a - 1) / (g ** (a - 1)).sum(), rtol=1e-12)
        assert p[-1] == 1.0
        task = dict(name="mqar", vocab_size=32, seq_len=32, num_kv_pairs=2, power_a=1e6)
        rk.RunConfig(model=dict(vocab_size=32, mixer=dict(name="attention")), task=task).task.generate(8, 0)
