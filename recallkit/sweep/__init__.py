"""Sweeps: load a sweep file, run it with an executor, keep results in SQLite."""

from recallkit.sweep.load import load_sweep
from recallkit.sweep.runner import RESULTS_FILE, run_sweep
from recallkit.sweep.store import Store

__all__ = ["RESULTS_FILE", "Store", "load_sweep", "run_sweep"]
