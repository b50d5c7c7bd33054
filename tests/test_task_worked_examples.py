"""The worked examples in the docstrings of copy, n-gram lookup, phone book and reversal, generated as
their docstrings call them (the other tasks' are checked beside their own tests)."""

from __future__ import annotations

import recallkit as rk
from recallkit.tasks.base import IGNORE_INDEX

_ = IGNORE_INDEX


def _example(name: str, **fields):
    return rk.make_task(name, **fields).generate(1, seed=0)


def test_copy_docstring_worked_example_is_true():
    batch = _example("copy", vocab_size=10, seq_len=10, alphabet_size=6, min_len=3, max_len=3)
    assert batch.inputs.tolist() == [[1, 9, 7, 7, 2, 9, 7, 7, 3, 0]]
    assert batch.labels.tolist() == [[_, _, _, _, 9, 7, 7, 3, _, _]]
    assert batch.prefix_len.tolist() == [4] and batch.slices["length"].tolist() == [3]


def test_ngram_lookup_docstring_worked_example_is_true():
    batch = _example("ngram_lookup", vocab_size=10, seq_len=12, alphabet_size=6, min_len=5, max_len=5,
                     ngram=2, answer_len=1)
    assert batch.inputs.tolist() == [[1, 9, 7, 7, 5, 5, 2, 9, 7, 3, 7, 0]]
    assert batch.labels.tolist() == [[_] * 9 + [7, _, _]]
    assert batch.prefix_len.tolist() == [6] and batch.slices["length"].tolist() == [5]


def test_phonebook_docstring_worked_example_is_true():
    batch = _example("phonebook", vocab_size=20, seq_len=32, min_entries=3, max_entries=3, name_alphabet=4,
                     name_len=1, number_len=2, shots=1)
    assert batch.inputs.tolist() == [[1, 17, 3, 5, 5, 2, 18, 3, 5, 6, 2, 16, 3, 13, 11, 2,
                                      4, 18, 3, 5, 6, 4, 16, 3, 13, 11, 0, 0, 0, 0, 0, 0]]
    assert batch.labels.tolist() == [[_] * 23 + [13, 11] + [_] * 7]  # at the query's ':' and first digit
    assert batch.prefix_len.tolist() == [16] and batch.slices["length"].tolist() == [3]


def test_reversal_docstring_worked_example_is_true():
    batch = _example("reversal", vocab_size=11, seq_len=8, num_facts=3, mode="in_context")
    assert batch.inputs.tolist() == [[1, 7, 3, 9, 2, 9, 4, 7]]
    assert batch.labels.tolist() == [[_] * 6 + [7, _]]
    assert batch.prefix_len.tolist() == [5]
