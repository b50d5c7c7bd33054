"""Sweeps: load a sweep file, run it with an executor, keep results in SQLite."""

from typing import Any

from recallkit.sweep.load import load_sweep
from recallkit.sweep.store import RESULTS_FILE, Store

__all__ = ["RESULTS_FILE", "Store", "load_sweep", "run_sweep"]


def __getattr__(name: str) -> Any:
    """``run_sweep`` is imported on first use: the store alone (reports) never loads training."""
    if name == "run_sweep":
        from recallkit.sweep.runner import run_sweep

        return run_sweep
    raise AttributeError(f"module 'recallkit.sweep' has no attribute {name!r}")
