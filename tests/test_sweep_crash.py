"""Crash safety: repeated SIGKILLs at random points, one writer per directory, `recallkit doctor`."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from recallkit.errors import RecallkitError
from recallkit.sweep import Store, load_sweep, run_sweep
from recallkit.sweep.doctor import diagnose
from recallkit.sweep.lock import is_locked, writer_lock
from tests.conftest import tiny_run


def _rows(db) -> list[tuple[str, str, float]]:
    """(run_id, status, updated_at); empty before the sweep has created its database and table."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as connection:
            return connection.execute("SELECT run_id, status, updated_at FROM runs").fetchall()
    except sqlite3.OperationalError:
        return []


def _done(db) -> int:
    return sum(status == "done" for _, status, _ in _rows(db))


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (Linux: read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError):  # not a process, or it just exited
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _command(pid: int) -> str | None:
    """The command line of a live process; None once it exited (zombies included)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rpartition(")")[2].split()[0] == "Z":
                return None
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None


# Ray processes that hold no run: its dashboard and runtime-env agents, and idle workers. They see at
# once that the raylet died, but an agent (always) and a worker (rarely, when it was still starting)
# first try to tell the dead GCS, which Ray waits for 60 s: too slow to wait for after every kill, so
# the test checks at its end that they exited too.
RAY_IDLE = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::IDLE")


def _started(pid: int) -> int | None:
    """When a live process started (clock ticks after boot, /proc/PID/stat field 22); None once it
    exited (zombies included)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _survivors(pids: set[int], timeout: float = 60.0, but: tuple[str, ...] = ()) -> list[str]:
    """The processes among ``pids`` (but those whose command starts with one of ``but``) still alive
    after at most ``timeout`` seconds; killed then, so that a failing test leaves none behind."""
    deadline = time.time() + timeout
    while True:
        alive = {pid: command for pid in pids
                 if (command := _command(pid)) and not command.startswith(but)}
        if not alive or time.time() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):  # it may just have exited
            os.kill(pid, signal.SIGKILL)
    return list(alive.values())


needs_ray = pytest.mark.skipif(  # CI sets RECALLKIT_REQUIRE_RAY=1: there a missing Ray fails the test
    importlib.util.find_spec("ray") is None and os.environ.get("RECALLKIT_REQUIRE_RAY") != "1",
    reason="needs `pip install recallkit[ray]`",
)


@pytest.mark.parametrize("executor", ["serial", "process", pytest.param("ray", marks=needs_ray)])
def test_repeated_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, sweep_file, executor):
    sweep, out = sweep_file(steps=1000), tmp_path / "out"  # runs of seconds: each kill finds one
    db = out / "results.sqlite"
    command = [sys.executable, "-m", "recallkit", "run", str(sweep), "--out", str(out), "--quiet",
               "--executor", executor, "--workers", "2"]
    rng = random.Random(0)
    finished: dict[str, float] = {}  # run_id -> updated_at when first seen done: must never change
    worker_kills, idle = 0, {}  # Ray's processes that hold no run (pid -> start time), checked at the end
    for kill in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 0:  # the first kill lands mid-sweep for sure: after two runs finished
            deadline = time.time() + 300  # generous: a loaded machine starts Ray slowly; the loop ends early
            while time.time() < deadline and _done(db) < 2:
                time.sleep(0.05)
        else:  # later kills at random points (torch import, Ray start, between or inside runs), while
            # runs remain: on an idle machine the tiny runs could otherwise all end before the kill, and
            # a driver with one run left trains it itself, with no worker to kill
            wake = time.time() + rng.uniform(1.0, 5.0)
            while time.time() < wake and _done(db) < 3 + kill:
                time.sleep(0.05)
        if executor == "process":  # first a worker dies (OOM killer, segfault): the driver goes on
            deadline = time.time() + 60
            while not (workers := _workers(process.pid)) and time.time() < deadline:
                time.sleep(0.05)
            os.kill(rng.choice(workers), signal.SIGKILL)
            worker_kills += 1
            time.sleep(rng.uniform(0.5, 2.0))
            assert process.poll() is None, "a dead worker must not end the sweep"
        below = _descendants(process.pid)  # process workers; a local Ray and its workers
        os.kill(process.pid, signal.SIGKILL)
        last_kill = time.time()
        process.wait()
        assert _survivors(below, but=RAY_IDLE) == [], "a killed sweep must not leave workers behind"
        idle |= {pid: _started(pid) for pid in below if (_command(pid) or "").startswith(RAY_IDLE)}
        if kill == 0:
            assert 2 <= _done(db) < 8, "the first kill must land mid-sweep"
        for run_id, status, updated_at in _rows(db):
            if status == "done":
                assert finished.setdefault(run_id, updated_at) == updated_at
    assert not is_locked(out)  # the lock died with the driver
    assert worker_kills == (3 if executor == "process" else 0)
    rows = run_sweep(load_sweep(sweep), out, executor=executor, workers=2, quiet=True)
    assert len(rows) == len({r["run_id"] for r in rows}) == 8
    assert all(r["status"] == "done" for r in rows)
    assert all(r["updated_at"] == finished[r["run_id"]] for r in rows if r["run_id"] in finished)
    deadline = last_kill + 120
    while (alive := [pid for pid, t0 in idle.items() if _started(pid) == t0]) and time.time() < deadline:
        time.sleep(0.2)  # the same processes (a reused pid has another start time), not a new Ray's
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert alive == [], "Ray's agents and idle workers must exit within 120 s of a killed sweep"


def _workers(driver: int) -> list[int]:
    """The driver's process workers (spawned Python processes, not multiprocessing's helpers)."""
    return [pid for pid in _descendants(driver)
            if "spawn_main" in (_command(pid) or "") and "resource_tracker" not in (_command(pid) or "")]


def test_killed_workers_are_retried_and_the_sweep_finishes_by_itself(tmp_path, sweep_file):
    """Random SIGKILLs of process workers (never more than the retries of one run): the sweep goes on,
    exits 0 with every run done once, and no finished run changes afterwards."""
    sweep, out = sweep_file(steps=60), tmp_path / "out"
    db = out / "results.sqlite"
    process = subprocess.Popen([sys.executable, "-m", "recallkit", "run", str(sweep), "--out", str(out),
                                "--quiet", "--executor", "process", "--workers", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rng, kills, finished = random.Random(1), 0, {}
    while kills < 2 and process.poll() is None:
        time.sleep(rng.uniform(0.5, 3.0))
        workers = _workers(process.pid)
        if workers and any(status == "running" for _, status, _ in _rows(db)):
            os.kill(rng.choice(workers), signal.SIGKILL)
            kills += 1
        for run_id, status, updated_at in _rows(db):
            if status == "done":
                assert finished.setdefault(run_id, updated_at) == updated_at
    _, stderr = process.communicate(timeout=300)
    assert kills == 2 and process.returncode == 0, stderr
    assert "Traceback" not in stderr
    rows = _rows(db)
    assert len(rows) == len({run_id for run_id, _, _ in rows}) == 8
    assert all(status == "done" for _, status, _ in rows)
    assert all(finished.get(run_id, updated_at) == updated_at for run_id, _, updated_at in rows)


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    with writer_lock(tmp_path):
        assert is_locked(tmp_path)
        with pytest.raises(RecallkitError, match=f"pid {os.getpid()}"):
            run_sweep([tiny_run()], tmp_path, quiet=True)
    assert not is_locked(tmp_path)


def test_doctor_finds_and_repairs_stale_and_corrupt_rows_and_never_touches_finished(tmp_path):
    configs = [tiny_run(seed=s) for s in range(4)]
    with Store(tmp_path / "results.sqlite") as store:
        store.add(configs)
        store.record(configs[0].run_id, {"status": "done", "metrics": {"accuracy": 1.0}})
        store.mark_running(configs[1].run_id)  # a driver killed mid-run
        store.mark_running(configs[2].run_id)
        store.db.execute("UPDATE runs SET metrics = '{broken' WHERE run_id = ?", (configs[3].run_id,))
        store.db.commit()
    found = diagnose(tmp_path)
    assert found.integrity == "ok" and not found.healthy
    assert sorted(found.stale) == sorted(c.run_id for c in configs[1:3])
    assert found.corrupt == [configs[3].run_id]
    with writer_lock(tmp_path):  # a live sweep: its running rows are not stale, and no repair
        assert diagnose(tmp_path).stale == []
        with pytest.raises(RecallkitError, match="repair it after"):
            diagnose(tmp_path, repair=True)
    repaired = diagnose(tmp_path, repair=True)
    assert repaired.repaired == 3 and diagnose(tmp_path).healthy
    with Store(tmp_path / "results.sqlite") as store:
        status = {r["run_id"]: r["status"] for r in store.rows()}
    assert status == {configs[0].run_id: "done", configs[1].run_id: "pending", configs[2].run_id: "pending",
                      configs[3].run_id: "failed"}


def test_doctor_on_a_missing_or_unreadable_database_is_one_clear_error(tmp_path):
    with pytest.raises(RecallkitError, match="no results database"):
        diagnose(tmp_path)
    (tmp_path / "results.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(RecallkitError, match="not a readable recallkit results database"):
        diagnose(tmp_path)


def test_ctrl_c_leaves_the_run_in_flight_pending_for_the_next_sweep(tmp_path):
    """A Ctrl-C (KeyboardInterrupt in the driver) returns the run in flight to ``pending``: doctor
    finds no stale row, and the next sweep finishes it."""
    configs = [tiny_run(lr=1e-3), tiny_run(lr=2e-3)]

    def interrupt(config, step):
        if config.train.lr == 2e-3 and step["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(configs, tmp_path, quiet=True, on_step=interrupt)
    with Store(tmp_path / "results.sqlite") as store:
        assert sorted(r["status"] for r in store.rows()) == ["done", "pending"]
    found = diagnose(tmp_path)
    assert not found.stale and not found.corrupt
    assert [r["status"] for r in run_sweep(configs, tmp_path, quiet=True)] == ["done", "done"]


def test_ctrl_c_inside_a_record_leaves_no_half_written_run(tmp_path, monkeypatch):
    """A Ctrl-C between the run row's update and its evaluation rows (one transaction) undoes the
    update: the run is pending again, and the next sweep stores it with its evaluations."""
    config = tiny_run()
    real_record = Store.record

    class InterruptedInsert:  # the connection, with SIGINT landing in the evaluations' INSERT
        def __init__(self, db):
            self.db = db

        def __getattr__(self, name):
            return getattr(self.db, name)

        def __enter__(self):
            return self.db.__enter__()

        def __exit__(self, *exception):
            return self.db.__exit__(*exception)

        def executemany(self, *args):
            raise KeyboardInterrupt

    def record(store, run_id, outcome):
        real, store.db = store.db, InterruptedInsert(store.db)
        try:
            real_record(store, run_id, outcome)
        finally:
            store.db = real

    monkeypatch.setattr(Store, "record", record)
    with pytest.raises(KeyboardInterrupt):
        run_sweep([config], tmp_path, quiet=True)
    with Store(tmp_path / "results.sqlite") as store:
        assert [(r["status"], r["metrics"]) for r in store.rows()] == [("pending", None)]
    monkeypatch.setattr(Store, "record", real_record)
    (row,) = run_sweep([config], tmp_path, quiet=True)
    with Store(tmp_path / "results.sqlite") as store:
        assert row["status"] == "done" and len(store.evaluations()) == len(row["metrics"]["evals"]) > 0


@pytest.mark.parametrize("executor", ["serial", pytest.param("ray", marks=needs_ray)])
def test_sigterm_stops_a_sweep_with_exit_143_and_nothing_on_stderr(tmp_path, sweep_file, executor):
    """Under Ray, SIGTERM printed Ray's crash report ("*** SIGTERM received ... PC: @") and exited 1,
    the code of an error; without Ray it exits 143 (128 + 15) in silence, and so it does now."""
    sweep, out = sweep_file(steps=1000), tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "recallkit", "run", str(sweep), "--out", str(out),
                                "--quiet", "--executor", executor],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline, db = time.time() + 300, out / "results.sqlite"  # a loaded machine starts Ray slowly
    while time.time() < deadline and "running" not in {status for _, status, _ in _rows(db)}:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (143, -signal.SIGTERM) and stderr == ""
    rows = run_sweep(load_sweep(sweep)[:1], out, executor="serial", quiet=True)  # the next run goes on
    assert rows[0]["status"] == "done"
