"""Check and repair a results directory: `recallkit doctor DIR [--repair]`.

Finds what a crash can leave behind: ``running`` rows of a driver that no longer runs (stale),
rows whose JSON cannot be decoded, SQLite-level damage, checkpoints that fail their checksum (or
belong to another run), and leftover files (``*.partial`` of a write that was killed, ``*.corrupt``
checkpoints set aside). Repair turns stale rows back to ``pending`` and corrupt rows to ``failed``
(both rerun on the next ``recallkit run``) and deletes the bad checkpoints and leftover files (their
runs restart from step 0); finished runs are never touched. The database is opened read-only
unless repairing.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from recallkit.atomic import PARTIAL_SUFFIX
from recallkit.checkpoint import CHECKPOINT_DIR, CORRUPT_SUFFIX, CorruptCheckpoint, read_checkpoint
from recallkit.errors import RecallkitError
from recallkit.sweep.directory import refuse_links
from recallkit.sweep.lock import is_locked
from recallkit.sweep.store import RESULTS_FILE, STATUSES, Store


@dataclass
class Diagnosis:
    """What ``diagnose`` found (and, with ``repair``, fixed)."""

    path: Path
    integrity: str
    counts: dict[str, int]
    sweep_running: bool
    stale: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    bad_checkpoints: dict[Path, str] = field(default_factory=dict)  # file -> what is wrong with it
    leftovers: list[Path] = field(default_factory=list)
    repaired: int = 0

    @property
    def healthy(self) -> bool:
        return (self.integrity == "ok" and not self.stale and not self.corrupt and not self.bad_checkpoints
                and not self.leftovers)


def diagnose(out_dir: str | Path, repair: bool = False) -> Diagnosis:
    """Inspect ``out_dir/results.sqlite``; with ``repair``, reset stale and corrupt rows so they rerun.

    Raises:
        RecallkitError: no database, or one SQLite cannot read at all.
    """
    out_dir = Path(out_dir)
    refuse_links(out_dir / CHECKPOINT_DIR)  # a repair deletes in there
    live = is_locked(out_dir)
    with Store(out_dir / RESULTS_FILE, create=False, readonly=not repair) as store:
        try:
            integrity = "; ".join(row[0] for row in store.db.execute("PRAGMA integrity_check"))
            rows = store.db.execute("SELECT run_id, status, config, metrics FROM runs").fetchall()
        except sqlite3.DatabaseError as error:
            raise RecallkitError(f"{store.path} is damaged beyond reading ({error})") from None
        counts = {status: sum(r[1] == status for r in rows) for status in STATUSES}
        stale = [] if live else [run_id for run_id, status, _, _ in rows if status == "running"]
        corrupt = [run_id for run_id, _, config, metrics in rows if not _decodes(config, metrics)]
        diagnosis = Diagnosis(store.path, integrity, counts, live, stale, corrupt)
        if not live:  # a live sweep rewrites its checkpoints: only a stopped one's are judged
            diagnosis.bad_checkpoints, diagnosis.leftovers = _check_checkpoints(out_dir / CHECKPOINT_DIR)
            diagnosis.leftovers += [p for p in sorted(out_dir.iterdir())  # a killed report's files
                                    if p.name.endswith(PARTIAL_SUFFIX) and p.is_file()]
        if repair and not diagnosis.healthy:
            if live:
                raise RecallkitError(f"a sweep is writing {out_dir}; repair it after that sweep stops")
            diagnosis.repaired = store.reset_running(stale) if stale else 0
            for run_id in corrupt:
                store.record(run_id, {"status": "failed", "error": "corrupt JSON found by recallkit doctor"})
            diagnosis.repaired += len(corrupt)
            for path in [*diagnosis.bad_checkpoints, *diagnosis.leftovers]:
                path.unlink(missing_ok=True)
                diagnosis.repaired += 1
    return diagnosis


def _check_checkpoints(directory: Path) -> tuple[dict[Path, str], list[Path]]:
    """Checkpoints that must not be resumed (and why), and leftover partial or set-aside files."""
    if not directory.is_dir():
        return {}, []
    bad, leftovers = {}, []
    for path in sorted(directory.iterdir()):
        if path.name.endswith(PARTIAL_SUFFIX) or CORRUPT_SUFFIX in path.name:
            leftovers.append(path)
        elif path.suffix == ".pt":
            try:
                read_checkpoint(path, path.stem)
            except CorruptCheckpoint as error:
                bad[path] = str(error)
    return bad, leftovers


def _decodes(*texts: str | None) -> bool:
    try:
        for text in texts:
            if text:
                json.loads(text)
    except json.JSONDecodeError:
        return False
    return True
