"""Forget the unfinished runs that a sweep file no longer names: `recallkit run SWEEP --out DIR --prune`.

A config removed from a sweep file keeps its row, so a ``pending`` or ``failed`` run of an old
config stays in the store, and in the report, with nothing left to run it. Pruning deletes those
rows (with their evaluations) and their checkpoints. Finished runs (``done``, ``diverged``) are never
pruned: their results stay in the directory's report whatever the sweep file says now.
"""

from __future__ import annotations

from pathlib import Path

from recallkit.checkpoint import CHECKPOINT_DIR
from recallkit.config import AnyRunConfig as RunConfig
from recallkit.sweep.directory import refuse_links
from recallkit.sweep.lock import writing
from recallkit.sweep.store import RESULTS_FILE


def prune_removed(out_dir: str | Path, configs: list[RunConfig]) -> list[str]:
    """Delete the unfinished runs of ``out_dir`` whose config is not in ``configs``; returns their ids.

    Holds the directory's writer lock, so it fails at once while a sweep writes the directory.
    A directory without a results database has nothing to prune.
    """
    out_dir = Path(out_dir)
    if not (out_dir / RESULTS_FILE).exists():
        return []
    with writing(out_dir) as store:
        refuse_links(out_dir / CHECKPOINT_DIR)  # deleted in below
        keep = {config.run_id for config in configs}
        store.reset_running()  # we hold the lock: a `running` row is a killed driver's, so unfinished
        removed = [row["run_id"] for row in store.rows() if row["run_id"] not in keep]
        dropped = store.drop_unfinished(removed)
        for run_id in dropped:
            (out_dir / CHECKPOINT_DIR / f"{run_id}.pt").unlink(missing_ok=True)
    return dropped
