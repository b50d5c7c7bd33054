"""``tasks.sampling.distinct_rows`` against its definition: the first k of a random permutation."""

from __future__ import annotations

import numpy as np
import pytest

from recallkit.tasks import sampling
from recallkit.tasks.sampling import distinct_rows


@pytest.mark.parametrize(("n", "C", "k"), [(1, 1, 1), (7, 5, 5), (300, 31, 4), (50, 4095, 16), (0, 10, 3)])
def test_rows_are_the_first_k_of_the_permutation_that_sorts_the_same_numbers(n, C, k):
    candidates = np.arange(100, 100 + C)
    rows = distinct_rows(np.random.default_rng(3), n, candidates, k)
    reference = candidates[np.argsort(np.random.default_rng(3).random((n, C)), axis=1)[:, :k]]
    assert rows.shape == (n, k) and rows.dtype == candidates.dtype
    assert np.array_equal(rows, reference)


def test_chunking_changes_neither_the_rows_nor_the_stream_after_them(monkeypatch):
    candidates = np.arange(1, 64)
    rng = np.random.default_rng(0)
    whole, after = distinct_rows(rng, 500, candidates, 8), rng.random()
    monkeypatch.setattr(sampling, "CHUNK_NUMBERS", 63 * 7)  # 7 rows at a time, the last chunk short
    rng = np.random.default_rng(0)
    assert np.array_equal(distinct_rows(rng, 500, candidates, 8), whole) and rng.random() == after


def test_every_candidate_is_equally_likely_at_every_place():
    rows = distinct_rows(np.random.default_rng(1), 20000, np.arange(10), 3)
    assert all(len(set(row)) == 3 for row in rows.tolist())
    for place in range(3):  # 2000 expected per candidate; 5 standard deviations is 212
        counts = np.bincount(rows[:, place], minlength=10)
        assert np.abs(counts - 2000).max() < 212
