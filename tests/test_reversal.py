"""The reversal-curse probe: fixed facts, no reversed held-out fact in training, probe slices, in context."""

from __future__ import annotations

import re

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.tasks import IGNORE_INDEX
from recallkit.tasks.reversal import FORWARD, REVERSE_HELD_OUT, REVERSE_TRAINED

REL, INV, SEP = 3, 4, 2


def reversal(**fields) -> rk.config.TaskConfig:
    return rk.make_task("reversal", **{"vocab_size": 64, "seq_len": 33, "num_facts": 20, **fields})


def triples(batch) -> list[tuple[int, int, int]]:
    """Every ``subject relation object`` statement of the sequences (relation = r or r^-1)."""
    found = []
    for row in batch.inputs.tolist():
        found += [(row[t - 1], row[t], row[t + 1]) for t in range(1, len(row) - 1) if row[t] in (REL, INV)]
    return found


def test_facts_depend_on_facts_seed_only():
    train, test = reversal(mode="train"), reversal(mode="test", seq_len=4)
    assert all((a == b).all() for a, b in zip(train.facts(), test.facts()))
    other = reversal(facts_seed=1).facts()
    assert not (other[0] == train.facts()[0]).all()
    objects, paired = train.facts()
    assert sorted(objects.tolist()) == list(range(25, 45))  # a bijection onto the object entities
    assert paired.sum() == 10


def test_training_never_states_a_held_out_fact_in_reverse():
    task = reversal(mode="train")
    objects, paired = task.facts()
    subject_of = {int(o): 5 + i for i, o in enumerate(objects)}
    seen = triples(task.generate(2000, seed=0))
    assert len(seen) == 2000 * 8
    reverse = {(s, o) for s, r, o in seen if r == INV}
    assert reverse and all(subject_of[s] == o and paired[o - 5] for s, o in reverse)
    forward = {(s, o) for s, r, o in seen if r == REL}
    assert len(forward) == 20 and all(objects[s - 5] == o for s, o in forward)  # every fact, forward


def test_training_labels_are_the_objects():
    batch = reversal(mode="train").generate(10, seed=0)
    scored = batch.labels != IGNORE_INDEX
    assert (scored.sum(1) == 8).all()
    assert torch.isin(batch.inputs[scored], torch.tensor([REL, INV])).all()
    rows, cols = scored.nonzero().unbind(1)
    assert torch.equal(batch.labels[scored], batch.inputs[rows, cols + 1])


def test_test_split_asks_both_directions_with_the_right_probe_slice():
    task = reversal(mode="test", seq_len=4)
    objects, paired = task.facts()
    batch = task.generate(400, seed=0)
    assert (batch.prefix_len == 0).all()
    for row, label, direction, probe in zip(batch.inputs.tolist(), batch.labels.tolist(),
                                            batch.slices["direction"].tolist(),
                                            batch.slices["probe"].tolist()):
        subject, relation = row[1], row[2]
        assert (relation == INV) == bool(direction)
        if relation == REL:
            assert label[2] == objects[subject - 5] and probe == FORWARD
        else:
            fact = label[2] - 5
            assert objects[fact] == subject
            assert probe == (REVERSE_TRAINED if paired[fact] else REVERSE_HELD_OUT)
    assert set(batch.slices["probe"].tolist()) == {FORWARD, REVERSE_TRAINED, REVERSE_HELD_OUT}


def test_in_context_variant_is_solvable_from_the_prompt():
    batch = reversal(mode="in_context", seq_len=8).generate(200, seed=0)
    scored = batch.labels != IGNORE_INDEX
    assert (scored.sum(1) == 1).all() and scored[:, 6].all()
    inputs = batch.inputs
    fact_subject, fact_object = inputs[:, 1], inputs[:, 3]
    expected = torch.where(inputs[:, 6] == INV, fact_subject, fact_object)
    assert torch.equal(batch.labels[:, 6], expected)
    assert torch.equal(batch.slices["direction"], (inputs[:, 6] == INV).long())
    assert (batch.prefix_len == 5).all()


def test_run_reports_the_reversal_curse_slices():
    run = rk.RunConfig(
        model=dict(vocab_size=64, d_model=16, num_layers=1, mixer={"name": "attention"}),
        task=reversal(mode="train"), eval_tasks=[reversal(mode="test", seq_len=4)],
        train=dict(max_steps=3, batch_size=8, num_train_examples=32, num_test_examples=64),
    )
    slices = rk.train(run).metrics["slices"]
    assert set(slices["probe"]) == {"0", "1", "2"} and set(slices["direction"]) == {"0", "1"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"vocab_size": 40}, "needs vocab_size >= 45"), ({"seq_len": 32}, "mode 'train' needs seq_len >= 33"),
     ({"mode": "in_context", "seq_len": 7}, "needs seq_len >= 8")],
)
def test_bad_sizes_give_one_line_errors(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        reversal(**fields)
