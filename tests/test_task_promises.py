"""What the synthetic and text tasks' docstrings promise at their edges (each found unpinned by
mutation testing): context ends, size boundaries, both ends of a length range, distinct draws, the
needle's nearest gap."""

from __future__ import annotations

import re

import pytest

from recallkit.tasks.ngram_lookup import NgramLookupConfig
from recallkit.tasks.set_disjointness import SetDisjointnessConfig
from recallkit.text_tasks import NiahTextConfig, PhonebookTextConfig


@pytest.mark.parametrize("key_position", ["suffix", "prefix"])
def test_ngram_lookup_prefix_len_is_everything_before_the_answer_cue(key_position):
    # suffix: <bos> x <sep> g <ans> y, context = <bos> x (L + 1); prefix: <bos> g <sep> x <ans> y,
    # context = everything before <ans> (n + L + 2)
    task = NgramLookupConfig(vocab_size=12, seq_len=24, alphabet_size=8, min_len=6, max_len=9, ngram=2,
                             answer_len=2, key_position=key_position)
    batch = task.generate(16, seed=3)
    L, n = batch.slices["length"], task.ngram
    want = L + 1 if key_position == "suffix" else L + n + 2
    assert batch.prefix_len.tolist() == want.tolist()
    after = batch.inputs.gather(1, batch.prefix_len[:, None])[:, 0]  # the first token past the context
    cue = task.sep_token if key_position == "suffix" else task.ans_token
    assert (after == cue).all()
    assert max(batch.prefix_len.tolist()) <= task.max_prefix_len()


def test_set_disjointness_sizes_are_checked_at_the_exact_boundary():
    a, b = 3, 5
    # seq_len a + b + 3 and vocab_size a + b + 3 (a + b - 1 elements) are the documented minimums
    tight = SetDisjointnessConfig(vocab_size=a + b + 3, seq_len=a + b + 3, set_sizes=(a, b))
    batch = tight.generate(8, seed=0)
    assert batch.inputs.shape == (8, a + b + 3)
    with pytest.raises(ValueError, match="seq_len"):
        SetDisjointnessConfig(vocab_size=64, seq_len=a + b + 2, set_sizes=(a, b))
    with pytest.raises(ValueError, match="vocab_size"):
        SetDisjointnessConfig(vocab_size=a + b + 2, seq_len=32, set_sizes=(a, b))


def test_text_phonebook_queries_distinct_entries_and_numbers_are_distinct():
    examples = PhonebookTextConfig(num_entries=5, num_queries=5).generate(5, seed=0)  # one book
    assert len({e.question for e in examples}) == 5  # every entry asked once
    book = PhonebookTextConfig(num_entries=10_000).generate(1, seed=0)[0].context
    numbers = re.findall(r": (\d{3}-\d{4})$", book, re.MULTILINE)
    assert len(numbers) == 10_000 == len(set(numbers))


def _needle_gaps(context: str) -> tuple[list[tuple[int, str]], int]:
    """(gap, key) of every needle in order, and the number of filler sentences."""
    needles, sentences = [], 0
    for sentence in re.split(r"(?<=\.) ", context):
        found = re.match(r"One of the special magic numbers for (\S+) is: \d+\.$", sentence)
        if found:
            needles.append((sentences, found.group(1)))
        else:
            sentences += 1
    return needles, sentences


@pytest.mark.parametrize("context_words", [16, 40, 90])
@pytest.mark.parametrize("depth", [0.25, 0.75, 1.0])
def test_niah_puts_the_needle_in_the_gap_nearest_the_depth(depth, context_words):
    task = NiahTextConfig(context_words=context_words, num_distractors=0, depth=depth)
    for example in task.generate(3, seed=0):
        [(gap, _)], sentences = _needle_gaps(example.context)
        assert abs(gap - depth * sentences) <= 0.5, (gap, depth * sentences)


def test_niah_needles_sharing_a_gap_are_not_always_queried_first():
    """With one sentence (two gaps) and the queried needle at depth 0, distractors share its gap; the
    model must not be able to find the answer as the first needle of its gap."""
    task = NiahTextConfig(context_words=3, num_distractors=6, depth=0.0)
    first = []
    for example in task.generate(20, seed=0):
        key = re.search(r"for (\S+) mentioned", example.question).group(1)
        needles, _ = _needle_gaps(example.context)
        shared = [k for gap, k in needles if gap == 0]
        if len(shared) > 1:
            first.append(shared[0] == key)
    assert first and not all(first)


def _length_tasks():
    from recallkit.tasks.copy import CopyConfig
    from recallkit.tasks.counting import CountingConfig
    from recallkit.tasks.phonebook import PhonebookConfig
    from recallkit.tasks.selective_copy import SelectiveCopyConfig
    from recallkit.tasks.state_tracking import StateTrackingConfig
    from recallkit.tasks.variable_tracking import VariableTrackingConfig

    return [
        CopyConfig(vocab_size=10, seq_len=16, alphabet_size=6, min_len=2, max_len=5),
        SelectiveCopyConfig(vocab_size=8, seq_len=32, min_len=2, max_len=5, noise_per_token=2),
        StateTrackingConfig(vocab_size=3, seq_len=8, min_len=2, max_len=5),
        VariableTrackingConfig(vocab_size=30, seq_len=40, num_chains=1, min_hops=1, max_hops=1, min_len=2,
                               max_len=5),
        CountingConfig(vocab_size=16, seq_len=24, top_k=1, rare_count=1, max_count=3, min_len=6, max_len=9),
        NgramLookupConfig(vocab_size=12, seq_len=24, alphabet_size=8, min_len=6, max_len=9, ngram=2,
                          answer_len=1),
        PhonebookConfig(vocab_size=20, seq_len=80, min_entries=3, max_entries=6, name_alphabet=4, name_len=2,
                        number_len=2, shots=1),
    ]


@pytest.mark.parametrize("task", _length_tasks(), ids=lambda t: t.name)
def test_every_length_of_the_range_is_drawn_both_ends_included(task):
    lo, hi = task.length_range()
    drawn = set(task.generate(200, seed=0).slices["length"].tolist())
    assert drawn == set(range(lo, hi + 1))


def test_every_length_task_is_rebuilt_at_the_shortest_length_its_config_accepts():
    """state_tracking.at_length(1) asked for seq_len=1, which every task refuses: eval_lengths=[1]
    failed with a validation error on a field the caller never set. Each task at the smallest min_len
    its config accepts must be rebuilt at that length."""
    checked = []
    for task in _length_tasks():
        for length in range(1, task.length_range()[1] + 1):
            try:  # the smallest length this task's config takes
                shortest = type(task).model_validate(task.model_dump() | {"min_len": length})
                break
            except ValueError:
                continue
        assert set(shortest.at_length(length).generate(8, seed=0).slices["length"].tolist()) == {length}
        checked.append((task.name, length))
    assert ("state_tracking", 1) in checked and ("copy", 1) in checked, checked


def test_compositional_mqar_suggests_a_vocabulary_that_fits():
    """24 does not fit a 3 x 3 grid (8 values) while 23 does (9), and the error said "use vocab_size >=
    23" to a vocab_size of 24. Reference: g first halves in [1, V//3) and g^2 values in [2V//3, V)."""
    from recallkit.tasks.compositional_mqar import CompositionalMQARConfig

    g = 3

    def fits(V: int) -> bool:
        return len(range(1, V // 3)) >= g and len(range(2 * (V // 3), V)) >= g * g

    for V in range(3, 60):
        if fits(V):
            assert CompositionalMQARConfig(vocab_size=V, seq_len=60, num_kv_pairs=g * g).vocab_size == V
            continue
        with pytest.raises(ValueError, match=r"use vocab_size=(\d+)") as error:
            CompositionalMQARConfig(vocab_size=V, seq_len=60, num_kv_pairs=g * g)
        suggested = int(re.search(r"use vocab_size=(\d+)", str(error.value)).group(1))
        assert suggested == next(W for W in range(V + 1, 200) if fits(W))
        assert f"the smallest is {next(W for W in range(3, 200) if fits(W))}" in str(error.value)


def test_forgetting_mqar_suggests_the_smallest_vocabulary():
    """n keys in [1, V//2) and n + u distinct values in [V//2, V); the hint said 2(n + u), one more than
    needed when n + u values fit in the upper half of an odd V."""
    from recallkit.tasks.forgetting_mqar import ForgettingMQARConfig

    n, u = 3, 2
    smallest = next(V for V in range(2, 100) if V // 2 - 1 >= n and V - V // 2 >= n + u)
    with pytest.raises(ValueError, match=f"use vocab_size >= {smallest}"):
        ForgettingMQARConfig(vocab_size=smallest - 1, seq_len=64, num_kv_pairs=n, num_updates=u,
                             max_overwrites=2)
    ForgettingMQARConfig(vocab_size=smallest, seq_len=64, num_kv_pairs=n, num_updates=u, max_overwrites=2)
