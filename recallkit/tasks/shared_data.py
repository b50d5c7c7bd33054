"""Task data generated once per process and shared by the runs that use it.

The runs of a sweep point (a learning-rate grid, the mixers compared on one task, the eviction
policies scored on one test set) draw the same data: same task config, same split seed, same size.
:func:`generate_once` returns that data set from a small cache, generated on first use, so a
process worker that trains them one after another generates it once. Data sets are read-only by
contract: training indexes batches out of them (a copy) and nothing writes into a ``Batch`` in place
(tests/test_train_evaluate.py checks a cached set is unchanged after a run).
"""

from __future__ import annotations

from collections import OrderedDict

from recallkit.base_config import TaskConfig
from recallkit.tasks.base import Batch

CACHE_SIZE = 4
"""Data sets kept per process, least recently used dropped first (a train split of 32k examples at
T=256 holds 131 MB of int64 inputs and labels; a run needs its train split and a test set or two)."""

_cache: OrderedDict[tuple[str, int, int], Batch] = OrderedDict()


def generate_once(task: TaskConfig, num_examples: int, seed: int) -> Batch:
    """``task.generate(num_examples, seed)``, from this process's cache when it was generated before."""
    key = (task.model_dump_json(), num_examples, seed)  # the JSON holds the task's name
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    data = _cache[key] = task.generate(num_examples, seed)
    if len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return data


def clear() -> None:
    """Drop every cached data set."""
    _cache.clear()
