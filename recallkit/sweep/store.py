"""SQLite results store (docs/design.md section 7): one row per run, keyed by the config hash, and one
row per evaluation of a finished run (each eval task, each KV-cache eviction policy and budget).

Only the sweep driver writes (one writer). Every status change is committed at once, so a sweep
killed at any point keeps every finished run, and a rerun skips them and never duplicates a row.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from recallkit.config import RunConfig
from recallkit.errors import RecallkitError
from recallkit.sweep.directory import make_directory, refuse_links

RESULTS_FILE = "results.sqlite"
"""The store's file name inside a sweep's output directory."""

STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "diverged")
"""Statuses a rerun skips. ``failed`` runs are retried (the cause may have been fixed)."""

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    config      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'diverged')),
    metrics     TEXT,
    state_size  INTEGER,
    num_params  INTEGER,
    wall_time   REAL,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id      TEXT NOT NULL REFERENCES runs (run_id),
    idx         INTEGER NOT NULL,
    task        TEXT NOT NULL,
    seq_len     INTEGER NOT NULL,
    policy      TEXT,
    budget      REAL,
    mode        TEXT,
    state_size  INTEGER,
    accuracy    REAL,
    PRIMARY KEY (run_id, idx)
);
"""
COLUMNS = {
    "meta": ["key", "value"],
    "runs": ["run_id", "label", "config", "status", "metrics", "state_size", "num_params", "wall_time",
             "error", "created_at", "updated_at"],
    "evaluations": ["run_id", "idx", "task", "seq_len", "policy", "budget", "mode", "state_size",
                    "accuracy"],
}
"""The columns of each table of ``SCHEMA``: a database with any other table is not a results store."""


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (a diverged run's last loss, a curve's accuracy before the
    first evaluation) as None: JSON has no NaN, and SQLite's ``json_extract`` rejects the ``NaN`` token
    that Python's ``json`` writes by default."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


SCORES = frozenset({"accuracy", "token_accuracy", "exact_match", "loss"})
"""Metric keys whose null, read back, is NaN: a score that was not a finite number (no scored
position, a diverged loss), as the run returned it, so that means and comparisons read it as such."""


def _scores_as_nan(metrics: dict[str, Any]) -> dict[str, Any]:
    """``json.loads`` object hook: each null score in ``SCORES`` is NaN again."""
    return {key: math.nan if value is None and key in SCORES else value for key, value in metrics.items()}


def _cannot_write(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite failed for want of write access (not because the file is damaged)."""
    return any(text in str(error) for text in ("readonly", "read-only", "unable to open", "disk I/O error"))


def _immutable(directory: Path) -> bool:
    """Whether no file can be created in ``directory`` (also for root, e.g. ``chattr +i``)."""
    try:
        probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".recallkit-probe-")
    except OSError:
        return True
    probe.close()
    return False


class Store:
    """Results database of one sweep directory (``DIR/results.sqlite``)."""

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False) -> None:
        """Open (with ``create``, create) the database; ``readonly`` (reports, doctor) never writes.

        A database of another schema, or an SQLite file of another program, is refused before
        anything is written to it.

        Raises:
            RecallkitError: no database (and not ``create``), a foreign or unreadable file.
        """
        self.path = Path(path)
        self._scratch: tempfile.TemporaryDirectory | None = None  # a read-only WAL database's private copy
        if not readonly:  # SQLite writes through a link, and so would its journal files
            sidecars = (self.path.with_name(self.path.name + s) for s in ("-wal", "-shm", "-journal"))
            refuse_links(self.path, *sidecars)
        exists = self.path.exists()
        if not exists and (readonly or not create):
            raise RecallkitError(f"no results database at {self.path}")
        if exists and not self.path.is_file():
            raise RecallkitError(f"{self.path} is not a file (a results database is one SQLite file)")
        if exists and readonly and self.path.stat().st_size == 0:  # to SQLite, a database without tables
            raise RecallkitError(f"{self.path} is empty: no run has been recorded in it")
        try:
            if exists:
                self.db = self._inspector()
                try:
                    self._check_schema(self.db)
                except BaseException:
                    self.close()
                    raise
                if readonly:  # no side files (beside a WAL, SQLite needs its -shm)
                    return
                self.close()
            make_directory(self.path.parent, "results directory")
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            # one transaction: a database is either a whole recallkit store or untouched
            self.db.executescript(f"BEGIN; {SCHEMA} INSERT OR IGNORE INTO meta VALUES "
                                  f"('schema_version', '{SCHEMA_VERSION}'); COMMIT;")
            self._check_schema(self.db)
        except sqlite3.OperationalError as error:
            if not _cannot_write(error):
                raise RecallkitError(f"{self.path} is not a readable recallkit results database "
                                     f"({error})") from None
            raise RecallkitError(f"cannot write to {self.path} ({error}): the file or its directory is "
                                 "read-only; `recallkit report` and `doctor` only read it") from None
        except sqlite3.DatabaseError as error:
            raise RecallkitError(f"{self.path} is not a readable recallkit results database "
                                 f"({error})") from None

    def _inspector(self) -> sqlite3.Connection:
        """A connection that changes nothing, not even side files: without a ``-wal`` file (no
        writer is connected, nothing is left to checkpoint) the database file holds all its data and
        is read as immutable; with one, read-only (SQLite then needs the WAL's shared memory)."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self._open_readonly() if wal.exists() else self._connect("immutable=1")

    def _open_readonly(self) -> sqlite3.Connection:
        """A connection that cannot write; in a directory where SQLite can create no side files (a
        WAL database needs them to read), the file is read as immutable."""
        try:
            db = self._connect("mode=ro")
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            if os.access(self.path.parent, os.W_OK | os.X_OK) and not _immutable(self.path.parent):
                raise
        wal = self.path.with_name(self.path.name + "-wal")
        if not wal.stat().st_size:
            return self._connect("immutable=1")
        # Read as immutable, SQLite would ignore the WAL, which may hold the latest results (a killed
        # writer's): read a private copy of the two files instead, where SQLite can build its -shm.
        self._scratch = tempfile.TemporaryDirectory(prefix="recallkit-read-")
        copy = Path(self._scratch.name) / self.path.name
        copy.write_bytes(self.path.read_bytes())
        copy.with_name(wal.name).write_bytes(wal.read_bytes())
        return sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True, timeout=30)

    def _connect(self, parameter: str) -> sqlite3.Connection:
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?{parameter}", uri=True, timeout=30)

    def _check_schema(self, db: sqlite3.Connection) -> None:
        """Refuse a database whose tables are not (a subset of) this schema's, or of another version."""
        tables = {name: [column[1] for column in db.execute(f"PRAGMA table_info('{name}')")]
                  for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                            "AND name NOT LIKE 'sqlite_%'")}  # not SQLite's own (ANALYZE)
        foreign = sorted(name for name, columns in tables.items() if COLUMNS.get(name) != columns)
        foreign += sorted(f"{kind} {name}" for kind, name, table in db.execute(  # views, triggers, ...
            "SELECT type, name, tbl_name FROM sqlite_master WHERE type != 'table'") if table not in COLUMNS)
        marks = [f"{pragma} {value}" for pragma in ("application_id", "user_version")
                 if (value := db.execute(f"PRAGMA {pragma}").fetchone()[0])]  # recallkit sets neither
        if foreign or marks:
            raise RecallkitError(f"{self.path} is not a recallkit results database (it has "
                                 f"{', '.join(foreign + marks)}); refusing to touch it: use another --out")
        if "meta" in tables:
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is not None and version[0] != SCHEMA_VERSION:
                raise RecallkitError(f"{self.path} has results schema v{version[0]}, "
                                     f"expected v{SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, configs: list[RunConfig]) -> None:
        """Register runs as ``pending``; runs already present keep their row."""
        now = time.time()
        self.db.executemany(
            "INSERT OR IGNORE INTO runs (run_id, label, config, status, created_at, updated_at) "
            "VALUES (?, ?, ?, 'pending', ?, ?)",
            [(c.run_id, c.display_label, c.canonical_json(), now, now) for c in configs],
        )
        self.db.commit()

    def unfinished(self, configs: list[RunConfig]) -> list[RunConfig]:
        """The configs whose run is not ``done`` or ``diverged``."""
        finished = {
            run_id for (run_id,) in self.db.execute(
                f"SELECT run_id FROM runs WHERE status IN ({','.join('?' * len(FINISHED))})", FINISHED
            )
        }
        return [c for c in configs if c.run_id not in finished]

    def mark_running(self, run_id: str) -> None:
        self.db.execute(
            "UPDATE runs SET status = 'running', error = NULL, updated_at = ? WHERE run_id = ?",
            (time.time(), run_id),
        )
        self.db.commit()

    def reset_running(self, run_ids: list[str] | None = None) -> int:
        """Turn ``running`` rows (all, or ``run_ids``) back to ``pending``; returns how many.

        Only safe when no sweep is writing: a row left ``running`` then belongs to a killed driver.
        """
        self.db.rollback()  # a write the interruption cut short must not land with this one
        query = "UPDATE runs SET status = 'pending', updated_at = ? WHERE status = 'running'"
        params: list[Any] = [time.time()]
        if run_ids is not None:
            query += f" AND run_id IN ({','.join('?' * len(run_ids))})"
            params += run_ids
        changed = self.db.execute(query, params).rowcount
        self.db.commit()
        return changed

    def record(self, run_id: str, outcome: dict[str, Any]) -> None:
        """Store a run's outcome: status, metrics, state_size, num_params, wall_time, error.

        Metrics are stored as strict JSON: a non-finite number becomes null (``rows`` reads a null
        score back as NaN)."""
        if outcome["status"] not in STATUSES:
            raise ValueError(f"unknown status {outcome['status']!r}")
        metrics = _finite(outcome.get("metrics"))
        evals = (metrics or {}).get("evals") or []
        with self.db:  # one transaction: the run and its evaluations land together, or (on any
            # exception, a Ctrl-C included) neither does
            self.db.execute(
                "UPDATE runs SET status = ?, metrics = ?, state_size = ?, num_params = ?, wall_time = ?, "
                "error = ?, updated_at = ? WHERE run_id = ?",
                (
                    outcome["status"], json.dumps(metrics, allow_nan=False), outcome.get("state_size"),
                    outcome.get("num_params"), outcome.get("wall_time"), outcome.get("error"), time.time(),
                    run_id,
                ),
            )
            self.db.execute("DELETE FROM evaluations WHERE run_id = ?", (run_id,))
            self.db.executemany(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, i, e["task"], e["seq_len"], e.get("policy"), e.get("budget"), e.get("mode"),
                  e.get("state_size"), e.get("accuracy")) for i, e in enumerate(evals)],
            )

    def drop_unfinished(self, run_ids: list[str]) -> list[str]:
        """Delete the rows (and evaluations) of those of ``run_ids`` that are not finished; returns
        their ids. Finished runs are kept whatever is asked."""
        asked = set(run_ids)
        with self.db:  # one transaction: a run and its evaluations go together
            dropped = [run_id for run_id, status in self.db.execute("SELECT run_id, status FROM runs")
                       if run_id in asked and status not in FINISHED]
            for table in ("evaluations", "runs"):
                self.db.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(r,) for r in dropped])
        return dropped

    def evaluations(self) -> list[dict[str, Any]]:
        """Every evaluation row (run_id, idx, task, seq_len, policy, budget, mode, state_size, accuracy)."""
        cursor = self.db.execute("SELECT * FROM evaluations ORDER BY run_id, idx")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, values)) for values in cursor]

    def rows(self) -> list[dict[str, Any]]:
        """Every run as a dict, config and metrics decoded from JSON, in insertion order."""
        cursor = self.db.execute("SELECT * FROM runs ORDER BY created_at, rowid")
        names = [d[0] for d in cursor.description]
        rows = []
        for values in cursor:
            row = dict(zip(names, values))
            try:
                row["config"] = json.loads(row["config"])
                metrics = row["metrics"]
                row["metrics"] = json.loads(metrics, object_hook=_scores_as_nan) if metrics else None
            except json.JSONDecodeError as error:
                raise RecallkitError(f"{self.path}: run {row['run_id']} has corrupt JSON ({error}); "
                                     f"`recallkit doctor {self.path.parent} --repair` reruns it") from None
            rows.append(row)
        return rows
