"""read_twice (JRT-Prompt) over every registered task: oracles, label alignment, sizes, configs, training."""

from __future__ import annotations

import re
from typing import Literal

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.base_config import TaskConfig
from recallkit.tasks import IGNORE_INDEX, Batch, MQARConfig, ReadTwiceConfig, read_twice
from tests.cases import TASK_CASES as INNER

CASES = [(name, fields) for name, (_, configs) in INNER.items() for fields in configs]


def test_every_registered_task_has_a_case():
    assert set(INNER) == set(rk.TASKS) - {"read_twice"}


@pytest.mark.parametrize("repeats", [2, 3])
@pytest.mark.parametrize(("name", "fields"), CASES)
def test_read_twice_keeps_tasks_solvable_and_aligned(name, fields, repeats):
    inner_task = rk.make_task(name, **fields)
    task = read_twice({"name": name, **fields}, repeats=repeats)
    inner, batch = inner_task.generate(200, seed=0), task.generate(200, seed=0)
    assert batch.inputs.shape == batch.labels.shape == (200, task.seq_len)
    assert task.vocab_size == inner_task.vocab_size
    assert torch.equal(batch.prefix_len, repeats * inner.prefix_len)
    assert batch.slices.keys() == inner.slices.keys()
    assert all(torch.equal(batch.slices[k], inner.slices[k]) for k in inner.slices)
    scored = batch.labels != IGNORE_INDEX
    assert (INNER[name][0](batch)[scored] == batch.labels[scored]).all()  # still solvable from the inputs
    for i in range(len(batch)):
        P, T = int(inner.prefix_len[i]), inner_task.seq_len
        context = inner.inputs[i, :P]
        assert torch.equal(batch.inputs[i, : repeats * P], context.repeat(repeats))
        shifted = slice((repeats - 1) * P, (repeats - 1) * P + T)
        assert torch.equal(batch.inputs[i, shifted], inner.inputs[i])
        assert torch.equal(batch.labels[i, shifted], inner.labels[i])  # same labels, shifted
        assert not scored[i, : (repeats - 1) * P].any()
        assert (batch.inputs[i, shifted.stop :] == task.filler_token).all()
        assert not scored[i, shifted.stop :].any()
    assert scored.sum() == (inner.labels != IGNORE_INDEX).sum()
    rows, positions = scored.nonzero().unbind(1)
    assert (positions >= batch.prefix_len[rows] - 1).all()  # no answer readable inside the prefix


@pytest.mark.parametrize(("name", "fields"), CASES)
def test_repeats_one_is_the_inner_task(name, fields):
    a = rk.make_task(name, **fields).generate(30, seed=4)
    b = read_twice({"name": name, **fields}, repeats=1).generate(30, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.prefix_len, b.prefix_len)


def test_seq_len_bound_is_exact_with_mixed_kv_counts():
    inner = MQARConfig(vocab_size=64, seq_len=40, num_kv_pairs=[2, 4, 8], num_passes=1)
    task = read_twice(inner, repeats=3)
    assert task.seq_len == 40 + 2 * 16 and task.max_prefix_len() == 48
    batch, base = task.generate(90, seed=1), inner.generate(90, seed=1)
    longest = batch.slices["num_kv_pairs"] == 8
    assert torch.equal(batch.inputs[longest, -1], base.inputs[longest, -1])  # fills seq_len exactly
    short = batch.slices["num_kv_pairs"] == 2
    assert (batch.inputs[short, 40 + 2 * 4 :] == 0).all()  # padded with MQAR's filler 0


def test_determinism_per_seed():
    task = read_twice({"name": "mqar", "vocab_size": 64, "seq_len": 32, "num_kv_pairs": [2, 4],
                       "random_fillers": True})
    a, b, c = task.generate(40, seed=5), task.generate(40, seed=5), task.generate(40, seed=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_config_round_trips_and_derives_sizes():
    task = rk.make_task("read_twice", task={"name": "set_disjointness", "vocab_size": 32, "seq_len": 20,
                                            "set_sizes": [(2, 6), (6, 2)]}, repeats=3)
    assert (task.vocab_size, task.seq_len, task.max_prefix_len()) == (32, 20 + 2 * 10, 30)
    assert ReadTwiceConfig(**task.model_dump()) == task
    assert ReadTwiceConfig.model_validate_json(task.model_dump_json()) == task


class NoBound(TaskConfig):
    name: Literal["no_bound"] = "no_bound"


class Boundary(TaskConfig):
    """Context ``5 6 7`` then ``8 0``; the label at P - 1 = 2 predicts the first token after the context."""

    name: Literal["boundary"] = "boundary"
    filler_token: int = 0

    def max_prefix_len(self) -> int:
        return 3

    def generate(self, num_examples: int, seed: int) -> Batch:
        labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 8, IGNORE_INDEX, IGNORE_INDEX]])
        return Batch(torch.tensor([[5, 6, 7, 8, 0]]), labels, torch.tensor([3]), {"kind": torch.tensor([1])})


def test_boundary_label_stays_on_the_last_copy():
    batch = read_twice(Boundary(vocab_size=9, seq_len=5), repeats=3).generate(1, seed=0)
    assert batch.inputs.tolist() == [[5, 6, 7, 5, 6, 7, 5, 6, 7, 8, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX] * 8 + [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.prefix_len.tolist() == [9] and batch.slices["kind"].tolist() == [1]


MQAR_16 = {"name": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": read_twice(MQAR_16)}, "read_twice of read_twice"),
        ({"task": {"name": "read_twice", "task": MQAR_16}}, "read_twice of read_twice"),
        ({"task": {"name": "nope"}}, "unknown task 'nope'"),
        ({"task": MQAR_16, "seq_len": 17},
         "read_twice derives seq_len=20 from its task; got seq_len=17"),
        ({"task": MQAR_16, "repeats": 0}, "read_twice needs an integer repeats >= 1; got 0"),
        ({"task": MQAR_16, "repeats": True}, "read_twice needs an integer repeats >= 1; got True"),
        ({"task": NoBound(vocab_size=8, seq_len=8)}, "task 'no_bound' to define max_prefix_len()"),
    ],
)
def test_bad_configs_are_refused_clearly(kwargs, message):
    with pytest.raises(ValidationError, match=re.escape(message)) as refused:
        ReadTwiceConfig(**kwargs)
    assert refused.value.error_count() == 1  # the cause alone, not fields it left underived


def test_docstring_worked_example_is_true():
    batch = read_twice(MQARConfig(vocab_size=8, seq_len=8, num_kv_pairs=2)).generate(1, seed=0)
    assert batch.inputs.tolist() == [[3, 4, 2, 7, 3, 4, 2, 7, 3, 0, 2, 0]]
    assert batch.labels.tolist() == [[-100] * 8 + [4, -100, 7, -100]]
    assert batch.prefix_len.tolist() == [8]


def test_run_config_with_read_twice_trains_and_reports_the_longer_state():
    mqar = {"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2}
    config = rk.RunConfig(
        model={"vocab_size": 32, "d_model": 16, "num_layers": 1, "mixer": {"name": "attention"}},
        task={"name": "read_twice", "task": mqar},
        train={"max_steps": 5, "batch_size": 8, "num_train_examples": 64, "num_test_examples": 16,
               "device": "cpu"},
    )
    assert isinstance(config.task, ReadTwiceConfig) and config.task.seq_len == 20
    assert rk.RunConfig.model_validate_json(config.model_dump_json()).run_id == config.run_id
    result = rk.train(config)
    assert result.metrics["steps"] == 5
    (row,) = result.metrics["evals"]
    assert row["seq_len"] == 20  # the state is reported at the longer length
    assert row["state_size"] == result.model.state_size(20) > result.model.state_size(16)
    assert row["prefill_tokens"] == 2 * 4  # both copies of the 2-pair context


@pytest.mark.parametrize(("name", "fields"), CASES)
def test_read_twice_of_a_generative_task_is_generative_with_one_answer_span(name, fields):
    """read_twice dropped the inner task's generative flag: JRT runs of copy, n-gram lookup, phone book
    and counting lost the greedy scores of the plain runs beside them in one panel."""
    from recallkit.generation import answer_spans

    inner, task = rk.make_task(name, **fields), read_twice({"name": name, **fields})
    assert task.generative == inner.generative
    if task.generative:
        answer_spans(task.generate(16, seed=0).labels)  # one contiguous answer per row, or it raises
