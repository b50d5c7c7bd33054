"""The task contract (docs/design.md section 5) over every registered task, with no exceptions.

Each row of ``tests/cases.py``'s ``TASK_CASES`` (and read_twice over the first case of each) must:
be solved by its oracle, which reads every answer from the inputs, with accuracy 1.0 under
``rk.evaluate``'s scoring; generate the same batch for a seed and another for another seed without
touching the global RNGs; survive a JSON round trip; score at least one position per row and none
inside the context; and keep the capabilities it declares (``max_prefix_len``, ``filler_token``,
the length axis).
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

import recallkit as rk
from recallkit.evaluate import _accuracies
from recallkit.tasks import IGNORE_INDEX, task_config
from tests.cases import TASK_CASES

N = 64
CONTRACT_CASES = [(name, {"name": name, **fields}, oracle)
                  for name, (oracle, configs) in TASK_CASES.items() for fields in configs]
# specs, built in each test: a task that cannot be read twice (no max_prefix_len or filler_token) fails
# its own read_twice cases rather than the collection of every case
CONTRACT_CASES += [("read_twice", {"name": "read_twice", "task": {"name": name, **configs[0]}}, oracle)
                   for name, (oracle, configs) in TASK_CASES.items()]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CONTRACT_CASES)]
# The docstring worked examples, checked where each task's own tests already check them.
WORKED_EXAMPLE_TESTS = {
    "mqar": ("tests.test_mqar", "test_docstring_worked_example_is_true"),
    "set_disjointness": ("tests.test_set_disjointness", "test_docstring_worked_example_is_true"),
    "read_twice": ("tests.test_transforms", "test_docstring_worked_example_is_true"),
    "forgetting_mqar": ("tests.test_tasks_2026", "test_forgetting_docstring_worked_example_is_true"),
    "compositional_mqar": ("tests.test_tasks_2026", "test_compositional_docstring_worked_example_is_true"),
    "selective_copy": ("tests.test_tasks_2026", "test_selective_copy_docstring_worked_example_is_true"),
    "state_tracking": ("tests.test_tasks_2026_more", "test_state_tracking_docstring_worked_example_is_true"),
    "variable_tracking": ("tests.test_tasks_2026_more",
                          "test_variable_tracking_docstring_worked_example_is_true"),
    "niah": ("tests.test_tasks_2026_more", "test_niah_docstring_worked_example_is_true"),
    "noisy_recall": ("tests.test_tasks_2026_more", "test_noisy_recall_docstring_worked_example_is_true"),
    "fuzzy_recall": ("tests.test_tasks_2026_more", "test_fuzzy_recall_docstring_worked_example_is_true"),
    "counting": ("tests.test_tasks_2026_more", "test_counting_docstring_worked_example_is_true"),
    **{name: ("tests.test_task_worked_examples", f"test_{name}_docstring_worked_example_is_true")
       for name in ("copy", "ngram_lookup", "phonebook", "reversal")},
}


def test_every_registered_task_has_a_case():
    assert {name for name, _, _ in CONTRACT_CASES} == set(rk.TASKS)


def test_every_registered_task_has_a_worked_example_test():
    assert set(WORKED_EXAMPLE_TESTS) == set(rk.TASKS)
    for module, test in WORKED_EXAMPLE_TESTS.values():
        assert callable(getattr(importlib.import_module(module), test))


@pytest.mark.parametrize(("name", "spec", "oracle"), CONTRACT_CASES, ids=IDS)
def test_the_oracle_scores_one(name, spec, oracle):
    """Every answer is readable from the inputs: the oracle's predictions score 1.0 as a model's would."""
    batch = task_config(spec).generate(N, seed=0)
    scored = batch.labels != IGNORE_INDEX
    metrics = _accuracies(oracle(batch) == batch.labels, scored)
    assert metrics["accuracy"] == metrics["exact_match"] == 1.0 and metrics["num_examples"] == N


@pytest.mark.parametrize(("name", "spec", "oracle"), CONTRACT_CASES, ids=IDS)
def test_generation_is_a_function_of_the_seed_alone(name, spec, oracle):
    """Same seed, same batch; another seed, another batch; the global RNGs are never read or moved
    (a run's data must not depend on what else drew random numbers before it)."""
    task = task_config(spec)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    a, b, c = task.generate(N, seed=3), task.generate(N, seed=3), task.generate(N, seed=4)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(x, y) for x, y in zip(np.random.get_state(), numpy_state))
    for x, y in ((a.inputs, b.inputs), (a.labels, b.labels), (a.prefix_len, b.prefix_len)):
        assert torch.equal(x, y)
    assert a.slices.keys() == b.slices.keys() and all(torch.equal(a.slices[k], b.slices[k]) for k in a.slices)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize(("name", "spec", "oracle"), CONTRACT_CASES, ids=IDS)
def test_json_round_trip(name, spec, oracle):
    """A run stores its task as JSON; reading it back must give the same task (and run id)."""
    task = task_config(spec)
    assert task_config(json.loads(task.model_dump_json())) == task


@pytest.mark.parametrize(("name", "spec", "oracle"), CONTRACT_CASES, ids=IDS)
def test_labels_and_declared_capabilities(name, spec, oracle):
    """Shapes and token ranges; every row is scored somewhere and never inside its context (the
    label at P - 1 predicts the first token after it); the declared bounds hold."""
    task = task_config(spec)
    batch = task.generate(N, seed=1)
    scored = batch.labels != IGNORE_INDEX
    assert batch.inputs.shape == batch.labels.shape == (N, task.seq_len) and batch.prefix_len.shape == (N,)
    assert ((batch.inputs >= 0) & (batch.inputs < task.vocab_size)).all()
    assert ((batch.labels[scored] >= 0) & (batch.labels[scored] < task.vocab_size)).all()
    assert scored.any(1).all()
    rows, positions = scored.nonzero().unbind(1)
    assert (positions >= batch.prefix_len[rows] - 1).all()
    assert all(v.shape == (N,) for v in batch.slices.values())
    if task.max_prefix_len() is not None:
        assert int(batch.prefix_len.max()) <= task.max_prefix_len()
    assert task.filler_token is None or 0 <= task.filler_token < task.vocab_size
    assert isinstance(task.generative, bool)


@pytest.mark.parametrize(("name", "spec", "oracle"), CONTRACT_CASES, ids=IDS)
def test_the_length_axis_is_declared_or_refused(name, spec, oracle):
    """A task with a ``length_unit`` rebuilds at any length its oracle still solves; one without
    refuses the length calls with a ValueError naming it (``eval_lengths`` is refused earlier)."""
    task = task_config(spec)
    if not task.has_length_axis:
        for call in (task.length_range, task.bits_per_unit, lambda: task.at_length(3)):
            with pytest.raises(ValueError, match="has no length axis"):
                call()
        return
    lo, hi = task.length_range()
    longer = task.at_length(hi + 1)
    batch = longer.generate(N, seed=2)
    assert (batch.slices["length"] == hi + 1).all() and lo <= hi
    assert longer.bits_per_unit() == task.bits_per_unit() > 0 and longer.length_unit == task.length_unit


@pytest.mark.parametrize(("name", "spec", "oracle"), CONTRACT_CASES, ids=IDS)
def test_no_answer_is_its_own_input(name, spec, oracle):
    """A label is what the model predicts from the inputs up to its position: a task whose every label
    is the input at that position is solved by echoing the input. An off-by-one label layout passes
    an oracle and a worked example written with the same slip; this catches it."""
    batch = task_config(spec).generate(N, seed=0)
    scored = batch.labels != IGNORE_INDEX
    assert not (batch.labels[scored] == batch.inputs[scored]).all()
