"""copy, ngram_lookup and phonebook (Repeat After Me): oracles, layouts, slices, lengths, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
from pydantic import ValidationError

import recallkit as rk
from recallkit.tasks import IGNORE_INDEX, Batch, has_length_axis

BOS, COPY, EOS = 1, 2, 3
SEP, ANS = 2, 3
COLON, QUERY = 3, 4


def _last(tokens: list[int], token: int, before: int) -> int:
    """Position of the last ``token`` in ``tokens[:before]``."""
    return before - 1 - tokens[:before][::-1].index(token)


def copy_oracle(batch: Batch) -> torch.Tensor:
    """Inside every copy region, the next character of the string read before it (then eos)."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        for t in range(len(row)):
            if COPY not in row[: t + 1] or EOS in row[_last(row, COPY, t + 1) : t + 1]:
                continue
            copy = _last(row, COPY, t + 1)
            string = row[_last(row, BOS, copy) + 1 : copy]
            offset = t - copy
            predictions[i, t] = string[offset] if offset < len(string) else EOS
    return predictions


def ngram_oracle(batch: Batch) -> torch.Tensor:
    """At ``ans`` and the answer, the characters that follow the key's only occurrence in the string.
    The two segments before ``ans`` are the key and the string in either order; the key is the shorter."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        if ANS not in row:
            continue
        ans = row.index(ANS)
        sep = _last(row, SEP, ans)
        bos = _last(row, BOS, sep)
        key, string = sorted([row[bos + 1 : sep], row[sep + 1 : ans]], key=len)
        (p,) = [q for q in range(len(string)) if string[q : q + len(key)] == key]
        following = string[p + len(key) :]
        for j in range(len(following)):
            if ans + j < len(row):
                predictions[i, ans + j] = following[j]
    return predictions


def phonebook_oracle(batch: Batch, name_len: int) -> torch.Tensor:
    """At the query's colon and digits, the queried name's number read from the book."""
    predictions = torch.full_like(batch.inputs, -1)
    for i, row in enumerate(batch.inputs.tolist()):
        first_query = row.index(QUERY)
        book = row[_last(row, BOS, first_query) + 1 : first_query]
        numbers = {}
        while book:
            cut = book.index(SEP)
            entry, book = book[:cut], book[cut + 1 :]
            numbers[tuple(entry[:name_len])] = entry[name_len + 1 :]
        query = _last(row, QUERY, len(row))
        number = numbers[tuple(row[query + 1 : query + 1 + name_len])]
        colon = query + 1 + name_len
        for j, digit in enumerate(number):
            predictions[i, colon + j] = digit
    return predictions


COPY_CASES = [
    {"vocab_size": 32, "seq_len": 43, "min_len": 1, "max_len": 20},
    {"vocab_size": 12, "seq_len": 40, "alphabet_size": 2, "min_len": 3, "max_len": 5,
     "examples_per_sequence": 3},
]
NGRAM_CASES = [
    {"vocab_size": 32, "seq_len": 40, "key_position": key, "min_len": 8, "max_len": 30, "ngram": n,
     "answer_len": k}
    for key in ("suffix", "prefix") for n, k in ((3, 2), (2, 1))
]
PHONEBOOK_CASES = [
    {"vocab_size": 48, "seq_len": 160, "min_entries": 3, "max_entries": 16},
    {"vocab_size": 20, "seq_len": 40, "min_entries": 1, "max_entries": 4, "shots": 0, "name_alphabet": 4,
     "name_len": 2, "number_len": 1},
]
ORACLES = {
    "copy": lambda batch, fields: copy_oracle(batch),
    "ngram_lookup": lambda batch, fields: ngram_oracle(batch),
    "phonebook": lambda batch, fields: phonebook_oracle(batch, fields.get("name_len", 2)),
}
CASES = ([("copy", f) for f in COPY_CASES] + [("ngram_lookup", f) for f in NGRAM_CASES]
         + [("phonebook", f) for f in PHONEBOOK_CASES])


@pytest.mark.parametrize(("name", "fields"), CASES)
def test_oracle_solves_every_example(name, fields):
    task = rk.make_task(name, **fields)
    batch = task.generate(300, seed=0)
    scored = batch.labels != IGNORE_INDEX
    assert batch.inputs.shape == batch.labels.shape == (300, task.seq_len)
    assert scored.any(1).all()
    assert (ORACLES[name](batch, fields)[scored] == batch.labels[scored]).all()
    rows, positions = scored.nonzero().unbind(1)
    assert (positions >= batch.prefix_len[rows]).all()  # the answer is never inside the context
    lo, hi = task.length_range()
    assert lo <= batch.slices["length"].min() and batch.slices["length"].max() <= hi
    assert (batch.inputs < task.vocab_size).all() and (batch.inputs >= 0).all()


@pytest.mark.parametrize(("name", "fields"), CASES)
def test_generation_is_deterministic(name, fields):
    task = rk.make_task(name, **fields)
    a, b, c = task.generate(50, seed=3), task.generate(50, seed=3), task.generate(50, seed=4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.prefix_len, b.prefix_len)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize(("name", "fields"), CASES)
def test_at_length_fixes_the_length_and_fits_the_sequence(name, fields):
    task = rk.make_task(name, **fields)
    assert has_length_axis(task) and task.generative in (True, fields.get("examples_per_sequence", 1) == 1)
    length = task.length_range()[1] * 2
    longer = task.at_length(length)
    batch = longer.generate(20, seed=1)
    assert (batch.slices["length"] == length).all()
    assert (batch.inputs[:, -1] != 0).any()  # seq_len is exactly what the length needs: no spare padding
    scored = batch.labels != IGNORE_INDEX
    oracle_fields = {**fields, "examples_per_sequence": 1}
    assert (ORACLES[name](batch, oracle_fields)[scored] == batch.labels[scored]).all()
    assert longer.bits_per_unit() == task.bits_per_unit() > 0


def test_copy_layout_and_scores():
    task = rk.make_task("copy", vocab_size=30, seq_len=23, alphabet_size=26, min_len=10, max_len=10)
    batch = task.generate(5, seed=0)
    row, labels = batch.inputs[0], batch.labels[0]
    assert row[0] == BOS and row[11] == COPY and row[22] == EOS
    assert torch.equal(row[1:11], row[12:22])
    assert (labels != IGNORE_INDEX).nonzero().flatten().tolist() == list(range(11, 22))  # L + 1 scored
    assert torch.equal(batch.prefix_len, torch.full((5,), 11))
    assert task.bits_per_unit() == pytest.approx(math.log2(26))


def test_copy_packing_scores_every_copy():
    task = rk.make_task("copy", vocab_size=12, seq_len=40, alphabet_size=2, min_len=3, max_len=5,
                        examples_per_sequence=3)
    batch = task.generate(20, seed=0)
    copies = (batch.inputs == COPY).sum(1)
    assert (copies == 3).all()
    lengths = [(r == BOS).nonzero().flatten() for r in batch.inputs]
    scored = (batch.labels != IGNORE_INDEX).sum(1)
    for i, starts in enumerate(lengths):
        strings = [int((batch.inputs[i, s + 1 :] == COPY).nonzero()[0]) for s in starts]
        assert scored[i] == sum(length + 1 for length in strings)
        assert batch.slices["length"][i] == max(strings)


def test_ngram_key_is_unique_and_followed_by_the_answer():
    task = rk.make_task("ngram_lookup", vocab_size=8, seq_len=40, alphabet_size=3, min_len=20, max_len=30,
                        ngram=4, answer_len=3)
    batch = task.generate(200, seed=0)
    for row in batch.inputs.tolist():
        sep, ans = row.index(SEP), row.index(ANS)
        string, key = row[1:sep], row[sep + 1 : ans]
        hits = [q for q in range(len(string) - 3) if string[q : q + 4] == key]
        assert len(hits) == 1 and hits[0] + 4 + 3 <= len(string)


def test_phonebook_names_are_distinct_and_lookups_differ():
    task = rk.make_task("phonebook", vocab_size=48, seq_len=200, min_entries=8, max_entries=20)
    batch = task.generate(100, seed=0)
    for i, row in enumerate(batch.inputs.tolist()):
        book = row[1 : int(batch.prefix_len[i])]
        entries = [book[j : j + 2] for j in range(0, len(book), 8)]
        assert len(entries) == batch.slices["length"][i] and len({tuple(e) for e in entries}) == len(entries)
        queries = [tuple(row[q + 1 : q + 3]) for q, token in enumerate(row) if token == QUERY]
        assert len(queries) == 3 == len(set(queries))
        assert (batch.labels[i] != IGNORE_INDEX).sum() == 4


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("copy", {"vocab_size": 20, "seq_len": 43}, "needs vocab_size >= 30"),
        ("copy", {"vocab_size": 30, "seq_len": 42}, "needs seq_len >= 43"),
        ("copy", {"vocab_size": 30, "seq_len": 99, "min_len": 5, "max_len": 4}, "min_len <= max_len"),
        ("ngram_lookup", {"vocab_size": 30, "seq_len": 99, "min_len": 4},
         "min_len >= ngram + answer_len = 5"),
        ("ngram_lookup", {"vocab_size": 30, "seq_len": 37}, "needs seq_len >= 38"),
        ("phonebook", {"vocab_size": 48, "seq_len": 999, "min_entries": 2}, "min_entries >= 3"),
        ("phonebook", {"vocab_size": 48, "seq_len": 999, "max_entries": 5, "name_alphabet": 2},
         "only 4 distinct"),
        ("phonebook", {"vocab_size": 40, "seq_len": 999}, "needs vocab_size >= 41"),
        ("phonebook", {"vocab_size": 48, "seq_len": 100}, "needs seq_len >= 153"),
        ("copy", {"vocab_size": 30, "seq_len": 43, "bos_token": 5}, "outside its content ids [4, 30)"),
        ("copy", {"vocab_size": 30, "seq_len": 43, "copy_token": 3}, "distinct special tokens"),
        ("copy", {"vocab_size": 30, "seq_len": 43, "alphabet_size": 20, "bos_token": 30},
         "in [0, vocab_size=30)"),
        ("ngram_lookup", {"vocab_size": 30, "seq_len": 99, "sep_token": 7}, "outside its content ids"),
        ("ngram_lookup", {"vocab_size": 30, "seq_len": 99, "ans_token": 30}, "in [0, vocab_size=30)"),
        ("ngram_lookup", {"vocab_size": 8, "seq_len": 110, "alphabet_size": 4, "min_len": 100, "max_len": 100,
                          "ngram": 2}, "unique 2-gram key with probability ~2.2e-03"),
    ],
)
def test_impossible_sizes_give_one_line_errors(name, fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        rk.make_task(name, **fields)


def test_at_a_length_the_task_cannot_hold_is_a_clear_error():
    task = rk.make_task("phonebook", vocab_size=20, seq_len=40, min_entries=1, max_entries=4, shots=0,
                        name_alphabet=4, name_len=1, number_len=1)
    with pytest.raises(ValidationError, match="only 4 distinct names"):
        task.at_length(5)


def test_ngram_that_cannot_be_unique_says_so(monkeypatch):
    """At config time, also for a length-generalisation length (so before training); the redraw
    limit of generation stays as a last guard."""
    fields = dict(vocab_size=8, seq_len=99, alphabet_size=2, min_len=60, max_len=60, ngram=1, answer_len=1)
    with pytest.raises(ValidationError, match="unique 1-gram key with probability"):
        rk.make_task("ngram_lookup", **fields)
    task = rk.make_task("ngram_lookup", **fields | {"min_len": 2, "max_len": 2})
    with pytest.raises(ValidationError, match="unique 1-gram key with probability"):
        task.at_length(60)
    monkeypatch.setattr("recallkit.tasks.ngram_lookup.MIN_UNIQUE_KEY", 0.0)
    with pytest.raises(ValueError, match="unique 1-gram key over 2 characters"):
        rk.make_task("ngram_lookup", **fields).generate(3, seed=0)


def test_phonebook_names_beyond_int64_are_drawn_distinct():
    """26^14 names do not fit numpy's int64 (the integer draw overflowed): drawn letter by letter."""
    task = rk.make_task("phonebook", vocab_size=64, seq_len=461, name_len=14, min_entries=20, max_entries=20)
    batch = task.generate(8, seed=0)
    for i, row in enumerate(batch.inputs.tolist()):
        book = row[1 : int(batch.prefix_len[i])]
        names = [tuple(book[j : j + 14]) for j in range(0, len(book), task.entry_len)]
        assert len(names) == 20 == len(set(names)) and all(min(n) >= 15 for n in names)
    assert torch.equal(task.generate(8, seed=0).inputs, batch.inputs)
