"""Fault injection (issue 26): foreign and read-only databases, unwritable paths, flipped bytes in
checkpoints and prefix files, killed workers. Each bad input gets one line and a documented exit
code; every finished run and every byte of a foreign file stay as they were."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import recallkit as rk
from recallkit.checkpoint import CHECKPOINT_DIR, MAGIC, CorruptCheckpoint, read_checkpoint
from recallkit.cli import app
from recallkit.errors import RecallkitError
from recallkit.inference import prefix_cache
from recallkit.inference.prefix_cache import load_prefix_state, save_prefix_state
from recallkit.sweep import Store, load_sweep, run_sweep
from recallkit.sweep.lock import LOCK_FILE, is_locked, writer_lock
from recallkit.sweep.runner import step_info
from tests.conftest import tiny_run
from tests.test_sweep_crash import _descendants, _rows, _survivors

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only spin
SWEEP = "import recallkit as rk\nfrom tests.conftest import tiny_run\nconfigs = [tiny_run(max_steps=4)]\n"


def _one_line(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    assert "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A sweep directory with one finished run (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    rows = run_sweep([tiny_run(max_steps=4)], out, quiet=True)
    assert rows[0]["status"] == "done"
    return out


@pytest.fixture
def sweep(tmp_path) -> Path:
    path = tmp_path / "sweep.py"
    path.write_text(SWEEP)
    return path


@contextlib.contextmanager
def immutable(*paths: Path):
    """Make files and directories read-only even for root (``chattr +i``); skip where unsupported."""
    done = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not supported here")
            done.append(path)
        yield
    finally:
        for path in reversed(done):
            subprocess.run(["chattr", "-i", str(path)], check=True)


# ---- foreign databases (item 4) --------------------------------------------------------------------

def _foreign_databases(tmp_path: Path) -> dict[str, Path]:
    made = {}
    for name, script in {
        "users": "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'a');",
        "runs of another program": "CREATE TABLE runs (id INTEGER, cmd TEXT); "
                                   "INSERT INTO runs VALUES (1, 'x');",
        "a wal database": "PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1);",
        "recallkit tables plus one": "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); "
                                     "CREATE TABLE extra (x);",
        "only a view": "CREATE VIEW other_app AS SELECT 1;",
        "an application id": "PRAGMA application_id = 1234;",
        "a user version": "PRAGMA user_version = 7;",
    }.items():
        directory = tmp_path / name.replace(" ", "_")
        directory.mkdir()
        with contextlib.closing(sqlite3.connect(directory / "results.sqlite")) as db:
            db.executescript(script)
            db.commit()
        made[name] = directory
    return made


def test_a_foreign_sqlite_database_is_refused_in_one_line_and_left_byte_for_byte(tmp_path, sweep):
    for name, directory in _foreign_databases(tmp_path).items():
        db = directory / "results.sqlite"
        before, files = db.read_bytes(), sorted(p.name for p in directory.iterdir())
        for args in (["run", str(sweep), "--out", str(directory), "--quiet"], ["report", str(directory)],
                     ["doctor", str(directory)], ["doctor", str(directory), "--repair"]):
            output = _one_line(runner.invoke(app, args))
            assert "is not a recallkit results database" in output, (name, args, output)
        assert db.read_bytes() == before, name
        assert sorted(p.name for p in directory.iterdir()) == files, name  # not even a lock file


def test_a_database_damaged_inside_is_one_line_for_run_and_report(tmp_path, sweep):
    assert runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path), "--quiet"]).exit_code == 0
    db = tmp_path / "results.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
        page = connection.execute("PRAGMA page_size").fetchone()[0]
    with open(db, "r+b") as file:  # the runs table's first page: its schema still reads
        file.seek((root - 1) * page)
        file.write(b"\xff" * page)
    for args in (["run", str(sweep), "--out", str(tmp_path), "--quiet"], ["report", str(tmp_path)]):
        assert "the results database is damaged" in _one_line(runner.invoke(app, args)), args


def test_a_directory_where_the_database_goes_is_named_as_such(tmp_path, sweep):
    (tmp_path / "results.sqlite").mkdir()
    output = _one_line(runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path), "--quiet"]))
    assert "is not a file" in output


def test_a_repeated_config_runs_once_with_every_executor(tmp_path):
    config = tiny_run()
    for executor in ("serial", "process"):
        trained = []
        rows = run_sweep([config, config, tiny_run(seed=1)], tmp_path / executor, executor=executor,
                         quiet=True, on_outcome=lambda c, _: trained.append(c.run_id))
        assert sorted(trained) == sorted(r["run_id"] for r in rows), executor  # each once
        assert [r["status"] for r in rows] == ["done", "done"], executor


def test_a_sweep_file_that_exits_while_loading_is_one_line(tmp_path):
    path = tmp_path / "exits.py"
    path.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(RecallkitError, match="exited while loading"):
        load_sweep(path)
    path.write_text("class Stop(BaseException):\n    pass\nraise Stop('not an Exception')\n")
    with pytest.raises(RecallkitError, match="Stop: not an Exception"):
        load_sweep(path)
    path.write_text("raise KeyboardInterrupt\n")  # Ctrl-C while the file runs: exit 130, as everywhere
    with pytest.raises(KeyboardInterrupt):
        load_sweep(path)
    path.write_text("raise ValueError('\\nthe real reason\\nmore')\n")  # the CLI prints a first line:
    with pytest.raises(RecallkitError, match=r"ValueError: the real reason$"):  # it was the bare prefix
        load_sweep(path)


def test_a_union_field_error_names_the_field_without_pydantic_internals(tmp_path):
    """mixer="attention" read "model.mixer.function-after[_check_dt_range(), MixerConfig]: ...", and
    an infinite budget "eval_policies.0.budget.int: ...; eval_policies.0.budget.float: ..."."""
    path = tmp_path / "sweep.py"
    task = "{'name': 'mqar', 'vocab_size': 32, 'seq_len': 16, 'num_kv_pairs': 2}"
    model = "{'vocab_size': 32, 'd_model': 16, 'num_layers': 1, 'mixer': %s}"
    for mixer, extra, expected in (
            ("'attention'", "", "model.mixer: Input should be a valid dictionary or instance of MixerConfig"),
            ("{'name': 'attention'}", ", eval_policies=[{'policy': 'h2o', 'budget': float('inf')}]",
             "eval_policies.0.budget: Input should be a finite number")):
        path.write_text(f"configs = [dict(model={model % mixer}, task={task}{extra})]\n")
        with pytest.raises(RecallkitError) as error:
            load_sweep(path)
        assert expected in str(error.value) and "[" not in str(error.value).split("invalid RunConfig")[1]
        assert str(error.value).count(expected) == 1


def test_a_results_database_of_another_schema_version_is_refused_before_writing(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        store.db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
        store.db.commit()
    before = (tmp_path / "results.sqlite").read_bytes()
    with pytest.raises(RecallkitError, match="schema v9, expected v1"):
        run_sweep([tiny_run()], tmp_path, quiet=True)
    assert (tmp_path / "results.sqlite").read_bytes() == before


def test_a_half_created_store_and_an_empty_file_are_completed_not_refused(tmp_path):
    """Edge inputs that are not foreign: an empty file, a store without its meta row, after ANALYZE."""
    db = tmp_path / "results.sqlite"
    db.write_bytes(b"")
    with Store(db) as store:
        store.add([tiny_run()])
    with contextlib.closing(sqlite3.connect(db)) as connection:  # a store killed before its meta row
        connection.execute("DELETE FROM meta")
        connection.execute("ANALYZE")  # SQLite's own sqlite_stat1 table is no sign of a foreign file
        connection.commit()
    with Store(db) as store:
        assert len(store.rows()) == 1


# ---- read-only use (item 5) ------------------------------------------------------------------------

def test_report_and_doctor_work_on_a_read_only_directory(finished, tmp_path, sweep):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with immutable(out / "results.sqlite", out):
        result = runner.invoke(app, ["doctor", str(out)])
        assert result.exit_code == 0 and "1 done" in result.output and "ok" in result.output, result.output
        result = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "report" / "report.html").stat().st_size > 0
        # writing the report into the read-only directory: one line that names the directory
        output = _one_line(runner.invoke(app, ["report", str(out)]))
        assert str(out) in output and "unreadable" not in output
        for args in (["doctor", str(out), "--repair"], ["run", str(sweep), "--out", str(out), "--quiet"]):
            output = _one_line(runner.invoke(app, args))  # writers: one line that says read-only
            assert "cannot write" in output and "read-only" in output, output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_read_only_copy_whose_latest_results_are_in_its_wal_is_read_whole(tmp_path, sweep, checkpointed):
    """A copy of a killed sweep's directory without its -shm, read-only: SQLite read it as immutable,
    without the WAL, and doctor said "1 pending; ok" of a database whose WAL held 3 runs. A WAL already
    copied into the database (checkpointed, as a writer killed after one leaves it) reads the same."""
    live, out = tmp_path / "live", tmp_path / "out"
    with Store(live / "results.sqlite") as store:
        store.add([tiny_run(max_steps=4)])
        store.db.execute("PRAGMA wal_autocheckpoint = 0")  # as a killed writer leaves it: runs in the WAL
        store.add([tiny_run(max_steps=5), tiny_run(max_steps=6)])
        if checkpointed:
            store.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        out.mkdir()
        for name in ("results.sqlite", "results.sqlite-wal"):
            shutil.copy(live / name, out / name)
    assert (out / "results.sqlite-wal").stat().st_size > 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with immutable(out / "results.sqlite", out / "results.sqlite-wal", out):
        result = runner.invoke(app, ["doctor", str(out)])
        assert result.exit_code == 0 and "3 pending" in result.output, result.output
        result = runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")])
        assert result.exit_code == 0 and "3 runs" in (tmp_path / "report" / "report.html").read_text()
        output = _one_line(runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"]))
        assert "cannot write" in output, output  # a writer's message, not a reader's
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_empty_results_file_is_named_empty_not_damaged(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"")
    for args in (["doctor", str(out)], ["report", str(out)]):
        output = _one_line(runner.invoke(app, args))
        assert "is empty: no run has been recorded in it" in output and "damaged" not in output, output


def test_readers_leave_a_results_directory_exactly_as_it_was(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert runner.invoke(app, ["report", str(out), "--out", str(tmp_path / "report")]).exit_code == 0
    assert runner.invoke(app, ["doctor", str(out)]).exit_code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no -shm or -wal left behind


def test_a_reader_never_writes_to_the_database(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    with Store(out / "results.sqlite", readonly=True) as store:
        assert store.rows()[0]["status"] == "done"
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.db.execute("DELETE FROM runs")


# ---- unwritable --out paths (item 3) ---------------------------------------------------------------

def test_an_out_path_that_cannot_be_a_directory_is_one_line_with_exit_1(finished, tmp_path, sweep):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    cases = {
        "is a file": (["run", str(sweep), "--quiet", "--out", str(a_file)], "it is a file"),
        "below a file": (["run", str(sweep), "--quiet", "--out", str(a_file / "sub")], "not a directory"),
        "report to a file": (["report", str(finished), "--out", str(a_file)], "it is a file"),
        "report below a file": (["report", str(finished), "--out", str(a_file / "r")], "not a directory"),
        "compare to a file": (["report", str(finished), str(other), "--out", str(a_file)], "it is a file"),
    }
    for name, (args, reason) in cases.items():
        output = _one_line(runner.invoke(app, args))
        assert reason in output, (name, output)
    assert a_file.read_text() == "x"
    with immutable(locked):
        for args in (["run", str(sweep), "--quiet", "--out", str(locked)],
                     ["run", str(sweep), "--quiet", "--out", str(locked / "sub")],
                     ["report", str(finished), "--out", str(locked)]):
            output = _one_line(runner.invoke(app, args))
            assert str(locked) in output and ("not permitted" in output or "denied" in output), output
    assert list(locked.iterdir()) == []


# ---- a dead process worker (item 1) ----------------------------------------------------------------

def test_a_killed_worker_is_retried_then_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """One run kills its worker on every attempt, one on its first attempt only: the first ends
    ``failed`` after 1 + WORKER_RETRIES attempts with the reason, the second and every sibling ``done``."""
    from recallkit.sweep import process_pool
    from tests import faults

    monkeypatch.setattr(process_pool, "execute", faults.die_if_lr_half_or_once)
    monkeypatch.setenv(faults.MARKERS, str(tmp_path))
    configs = [tiny_run(lr=0.5), tiny_run(seed=1), tiny_run(seed=2), tiny_run(seed=3), tiny_run(seed=4)]
    rows = {r["run_id"]: r for r in run_sweep(configs, tmp_path / "out", executor="process", workers=2,
                                             quiet=True)}
    assert len(rows) == 5
    failed = rows[configs[0].run_id]
    assert failed["status"] == "failed"
    assert failed["error"] == (f"worker process died on all {process_pool.WORKER_RETRIES + 1} attempts "
                               "(last: killed by SIGKILL); out of memory? the OOM killer sends SIGKILL")
    assert all(rows[c.run_id]["status"] == "done" for c in configs[1:])
    assert (tmp_path / "killed-once").exists()  # the retried run did die once


# ---- checkpoints: flipped bytes, truncation, foreign files (item 2) --------------------------------

class Interrupt(BaseException):
    """Stands for a kill mid-run (not an Exception: nothing records it as a failed run)."""


def _checkpointed(config, path: Path, step: int = 3) -> bytes:
    def stop(s: dict) -> None:
        if s["step"] == step:
            raise Interrupt

    with pytest.raises(Interrupt):
        rk.train(config, on_step=stop, checkpoint=path, checkpoint_seconds=0)
    return path.read_bytes()


def _bad_checkpoints(good: bytes, other_run: bytes) -> dict[str, bytes]:
    """Every way a checkpoint file can be wrong, from one good file."""
    header_end = good.index(b"\n") + 1

    def flip(position: int, bit: int = 0) -> bytes:
        data = bytearray(good)
        data[position] ^= 1 << bit
        return bytes(data)

    missing = _torch_bytes({"format": 2, "run_id": "x"})  # checksummed, but keys are missing
    return {
        "flip in the header": flip(3),
        "flip in the checksum": flip(header_end - 5),
        "flip in the first payload byte": flip(header_end),
        "flip in the middle (a mantissa bit)": flip((header_end + len(good)) // 2),
        "flip of a high bit near the end (an exponent)": flip(len(good) - 200, 6),
        "flip in the last byte": flip(len(good) - 1, 7),
        "truncated to half": good[: len(good) // 2],
        "truncated by one byte": good[:-1],
        "truncated to the header": good[:header_end],
        "empty": b"",
        "random bytes": bytes(random.Random(0).randrange(256) for _ in range(4096)),
        "a format 1 (unchecksummed) torch file": _torch_bytes({"format": 1, "run_id": "x"}),
        "checksummed but missing keys": MAGIC + hashlib.sha256(missing).hexdigest().encode() + b"\n"
        + missing,
        "another run's checkpoint": other_run,
    }


def _torch_bytes(payload) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


CKPT_RUN = dict(max_steps=8, eval_every=4, num_train_examples=64, early_stop_accuracy=None)


def test_a_damaged_or_foreign_checkpoint_is_never_resumed_and_the_run_ends_as_a_fresh_one(tmp_path):
    config, other = tiny_run(**CKPT_RUN), tiny_run(seed=9, **CKPT_RUN)
    fresh = rk.train(config).metrics
    good = _checkpointed(config, tmp_path / "good.pt")
    assert read_checkpoint(tmp_path / "good.pt", config.run_id)["step"] == 2
    bad = _bad_checkpoints(good, _checkpointed(other, tmp_path / "other.pt"))
    for name, data in bad.items():
        path = tmp_path / "run.pt"
        path.write_bytes(data)
        with pytest.raises(CorruptCheckpoint) as error:
            read_checkpoint(path, config.run_id)
        assert "\n" not in str(error.value), name
        result = rk.train(config, checkpoint=path, checkpoint_seconds=0)
        warnings = result.metrics.pop("warnings")
        assert len(warnings) == 1 and "restarted from step 0" in warnings[0], name
        assert {k: v for k, v in result.metrics.items() if k != "wall_time"} == {
            k: v for k, v in fresh.items() if k != "wall_time"}, name
        assert (tmp_path / "run.pt.corrupt").read_bytes() == data, name  # kept aside, not resumed
        (tmp_path / "run.pt.corrupt").unlink()
    assert len(bad) == 14


def test_a_sweep_restarts_a_run_with_a_corrupt_checkpoint_and_doctor_finds_and_repairs_them(tmp_path, capsys):
    config = tiny_run(**CKPT_RUN)
    out = tmp_path / "out"
    checkpoints = out / CHECKPOINT_DIR
    checkpoints.mkdir(parents=True)
    good = _checkpointed(config, checkpoints / f"{config.run_id}.pt")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 1
    (checkpoints / f"{config.run_id}.pt").write_bytes(bytes(flipped))
    (checkpoints / f"{config.run_id}.pt.123.partial").write_bytes(good[:100])  # a write that was killed
    with Store(out / "results.sqlite") as store:
        store.add([config])
    result = runner.invoke(app, ["doctor", str(out)])
    assert result.exit_code == 4, result.output
    assert "bad checkpoint" in result.output and "checksum mismatch" in result.output
    assert "1 leftover files" in result.output and ".partial" in result.output
    assert (checkpoints / f"{config.run_id}.pt").read_bytes() == bytes(flipped)  # doctor alone: unchanged
    result = runner.invoke(app, ["doctor", str(out), "--repair"])
    assert result.exit_code == 0 and "repaired 2 problems" in result.output, result.output
    assert list(checkpoints.iterdir()) == []
    assert runner.invoke(app, ["doctor", str(out)]).exit_code == 0
    # without doctor: the run itself sets the corrupt checkpoint aside, warns and starts over
    (checkpoints / f"{config.run_id}.pt").write_bytes(bytes(flipped))
    capsys.readouterr()
    rows = run_sweep([config], out, quiet=True)
    assert rows[0]["status"] == "done"
    assert rows[0]["metrics"]["curve"] == rk.train(config).metrics["curve"]
    assert "restarted from step 0" in capsys.readouterr().err
    assert [p.name for p in checkpoints.iterdir()] == [f"{config.run_id}.pt.corrupt"]
    result = runner.invoke(app, ["doctor", str(out)])
    assert result.exit_code == 4 and "1 leftover files" in result.output


# ---- exit codes and Ctrl-C (item 6) ----------------------------------------------------------------

def test_run_exits_3_when_runs_failed_and_doctor_4_when_it_found_problems(tmp_path, sweep, monkeypatch):
    import recallkit.sweep.worker as worker

    def failing(config, on_step=None, device=None, **checkpointing):
        raise RuntimeError("boom")

    monkeypatch.setattr(worker, "train", failing)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"])
    assert result.exit_code == 3, result.output
    assert "1 of 1 runs failed (exit code 3)" in result.output and "RuntimeError: boom" in result.output
    assert (out / "report.html").exists()  # the report is still written
    monkeypatch.undo()
    assert runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"]).exit_code == 0  # retried
    with Store(out / "results.sqlite") as store:
        store.mark_running(store.rows()[0]["run_id"])  # as a killed driver leaves it
    result = runner.invoke(app, ["doctor", str(out)])
    assert result.exit_code == 4 and "1 stale running rows" in result.output, result.output
    assert runner.invoke(app, ["doctor", str(out), "--repair"]).exit_code == 0
    assert runner.invoke(app, ["doctor", str(out)]).exit_code == 0


CTRL_C_SWEEP = """
from tests.conftest import tiny_run
configs = [tiny_run(seed=s, max_steps=3000, eval_every=100, early_stop_accuracy=None) for s in range(3)]
"""


def _default_sigint() -> None:
    """Ctrl-C's default disposition in the child, as in a terminal: a test run started in the
    background by a non-interactive shell ignores SIGINT, and children inherit the ignore."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_ctrl_c_is_one_line_exit_130_and_the_runs_resume(tmp_path, executor):
    sweep, out = tmp_path / "sweep.py", tmp_path / "out"
    sweep.write_text(CTRL_C_SWEEP)
    command = [sys.executable, "-m", "recallkit", "run", str(sweep), "--out", str(out), "--quiet",
               "--executor", executor, "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, cwd=Path(__file__).parent.parent,
                               preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while time.time() < deadline and not any(s == "running" for _, s, _ in _rows(out / "results.sqlite")):
        time.sleep(0.1)
    time.sleep(2)  # inside training
    below = _descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):  # an impatient user presses it twice
        os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=180)  # generous: CI machines are shared and loaded
    assert process.returncode == 130, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("interrupted: "), stderr
    assert "resume" in stderr and "Traceback" not in stdout + stderr
    assert _survivors(below, timeout=20) == []
    rows = run_sweep(load_sweep(sweep), out, executor=executor, workers=2, quiet=True)
    assert [r["status"] for r in rows] == ["done"] * 3



CTRL_C_IN_IMPORTS = """
import sys
class Interrupt:  # Ctrl-C while torch imports: the first seconds of every command
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
sys.argv = ["recallkit", "--help"]
from recallkit.launch import main
main()
"""


def test_ctrl_c_while_the_cli_imports_is_one_line_exit_130():
    """The command's entry point (pyproject's script) catches it, where ``recallkit.cli`` cannot."""
    result = subprocess.run([sys.executable, "-c", CTRL_C_IN_IMPORTS], capture_output=True, text=True,
                            check=False)
    assert (result.returncode, result.stdout, result.stderr) == (130, "", "interrupted\n")
    assert "launch:main" in (Path(__file__).parent.parent / "pyproject.toml").read_text()

# ---- validation when the sweep loads, not mid-run (item 7) -----------------------------------------

ATTENTION = "model=dict(vocab_size=32, mixer=dict(name='attention'))"
LOAD_TIME_ERRORS = {
    "hyena max_len below the task": ("model=dict(vocab_size=32, mixer=dict(name='hyena', max_len=8))",
                                     "task seq_len=16 exceeds hyena max_len=8"),
    "base_conv max_len below an eval task": (
        "model=dict(vocab_size=32, mixer=dict(name='base_conv', max_len=16)), "
        "eval_tasks=[dict(name='mqar', vocab_size=32, seq_len=32, num_kv_pairs=2)]",
        "task seq_len=32 exceeds base_conv max_len=16"),
    "eval_policies without attention": (
        "model=dict(vocab_size=32, mixer=dict(name='linear_attention')), "
        "eval_policies=[dict(policy='h2o', budget=4)]",
        "this model has no attention layer (mixers: linear_attention"),
    "lr=inf": (f"{ATTENTION}, train=dict(lr=float('inf'))", "train.lr: Input should be a finite number"),
    "lr=nan": (f"{ATTENTION}, train=dict(lr=float('nan'))", "train.lr: Input should be a finite number"),
    "grad_clip=inf": (f"{ATTENTION}, train=dict(grad_clip=float('inf'))",
                      "train.grad_clip: Input should be a finite number"),
}


@pytest.mark.parametrize("case", list(LOAD_TIME_ERRORS))
def test_configs_that_would_fail_mid_run_are_refused_when_the_sweep_loads(tmp_path, case):
    fields, message = LOAD_TIME_ERRORS[case]
    sweep = tmp_path / "sweep.py"
    sweep.write_text("import recallkit as rk\nconfigs = [rk.RunConfig(task=dict(name='mqar', vocab_size=32, "
                     f"seq_len=16, num_kv_pairs=2), {fields})]\n")
    output = _one_line(runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]))
    assert message in output, output
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_run_on_cuda_without_cuda_is_refused_before_the_sweep_starts(tmp_path):
    sweep = tmp_path / "sweep.py"
    sweep.write_text("from tests.conftest import tiny_run\nconfigs = [tiny_run(), tiny_run(device='cuda')]\n")
    output = _one_line(runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]))
    assert "has train.device='cuda' but CUDA is not available here" in output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "out"), "--quiet",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output  # the override runs it here


# ---- prefix state files edited with their checksum recomputed (item 8) -----------------------------

def _edited(model, path: Path, edit) -> Path:
    """Rewrite the prefix state file at ``path`` with ``edit(metadata, tensors)`` applied and a fresh
    checksum: a file that passes the checksum but is not what the model saved."""
    with safe_open(path, framework="pt") as file:
        metadata, tensors = dict(file.metadata()), {name: file.get_tensor(name) for name in file.keys()}
    edit(metadata, tensors)
    metadata["checksum"] = prefix_cache._checksum(metadata, tensors)
    out = path.with_name("edited.safetensors")
    save_file(tensors, out, metadata=metadata)
    return out


def _halve(name):
    def edit(metadata, tensors):
        tensors[name] = tensors[name][..., : tensors[name].shape[-1] // 2].contiguous()
    return edit


def _set(key, value):
    def edit(metadata, tensors):
        metadata[key] = value
    return edit


def _leaf(name, value):
    def edit(metadata, tensors):
        leaves = json.loads(metadata["leaves"])
        leaves[name] = value
        metadata["leaves"] = json.dumps(leaves, sort_keys=True)
    return edit


def _retype(name, dtype):
    def edit(metadata, tensors):
        tensors[name] = tensors[name].to(dtype)
    return edit


def _longer_cache(metadata, tensors):  # a KV cache with more tokens than the prefix
    for name in ("layers.0.key", "layers.0.value"):
        tensors[name] = torch.cat([tensors[name], tensors[name]], dim=2)


PREFIX_EDITS = {
    ("linear_attention", "half-size state"): (_halve("layers.0"), "does not fit this model's state"),
    ("mamba", "half-size ssm"): (_halve("layers.0.ssm"), "does not fit this model's state"),
    ("attention", "half-width keys"): (_halve("layers.0.key"), "does not fit this model's state"),
    ("attention", "more cached tokens than the prefix"): (_longer_cache, "does not fit this model's state"),
    ("attention", "prefix_len above the position"): (_set("prefix_len", "9"), "inconsistent: position=6"),
    ("attention", "prefix_len below the cache"): (_set("prefix_len", "3"), "does not fit"),
    ("retnet", "position edited"): (_leaf("position", 2), "inconsistent: position=2 but prefix_len=6"),
    ("attention", "seen edited"): (_leaf("layers.0.seen", 4), "inconsistent: layers.0.seen=4"),
    ("gla", "float64 state"): (_retype("layers.0", torch.float64), "does not fit this model's state"),
}


@pytest.mark.parametrize("case", list(PREFIX_EDITS), ids=lambda c: f"{c[0]}: {c[1]}")
def test_an_edited_prefix_state_with_a_recomputed_checksum_is_refused_at_load(tmp_path, case):
    mixer, _ = case
    edit, message = PREFIX_EDITS[case]
    torch.manual_seed(0)
    model = rk.build_model(rk.ModelConfig(vocab_size=32, d_model=16, num_layers=1, mixer={"name": mixer}))
    ids = torch.randint(0, 32, (2, 7))
    _, state = model.prefill(ids[:, :6])
    path = save_prefix_state(model, state, tmp_path / "prefix.safetensors")
    load_prefix_state(model, path)  # the file as saved loads
    with pytest.raises(RecallkitError, match=message) as error:
        load_prefix_state(model, _edited(model, path, edit))
    assert "\n" not in str(error.value)


# ---- small things (item 9) -------------------------------------------------------------------------

def test_a_lone_surrogate_in_a_label_is_refused_at_load_with_context(tmp_path):
    sweep = tmp_path / "sweep.py"
    sweep.write_text("from tests.conftest import tiny_run\nconfigs = [tiny_run().model_copy()]\n"
                     "import recallkit as rk\nconfigs.append(rk.RunConfig(**{**configs[0].model_dump(), "
                     "'label': 'width \\ud800'}))\n")
    output = _one_line(runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]))
    assert "label" in output and "lone surrogate" in output and "position 6" in output, output
    assert not (tmp_path / "out").exists()  # no empty results file left behind


@pytest.mark.parametrize("label", ["a\nb", "tab\there", "bell\x07", "right\u202eto left"])
def test_a_control_character_in_a_label_is_refused(label):
    """A newline split the label's row of the terminal table in two."""
    with pytest.raises(ValidationError, match="holds a control character"):
        rk.RunConfig(**{**tiny_run().model_dump(), "label": label})
    assert rk.RunConfig(**{**tiny_run().model_dump(), "label": "width 64 · ü"}).label == "width 64 · ü"


def test_deleting_the_lock_file_mid_sweep_does_not_let_a_second_writer_in(tmp_path):
    with writer_lock(tmp_path):
        (tmp_path / LOCK_FILE).unlink()
        assert is_locked(tmp_path)
        with pytest.raises(RecallkitError, match="another sweep"):
            run_sweep([tiny_run()], tmp_path, quiet=True)
    assert not is_locked(tmp_path)
    assert run_sweep([tiny_run(max_steps=2)], tmp_path, quiet=True)[0]["status"] == "done"


def test_progress_shows_no_accuracy_before_the_first_evaluation():
    assert step_info({"step": 3, "max_steps": 20, "loss": 2.5, "accuracy": float("nan")}) == "loss 2.500"
    assert step_info({"step": 10, "max_steps": 20, "loss": 2.5, "accuracy": 0.25}) == "loss 2.500 acc 0.250"


def test_the_console_table_says_diverged_instead_of_a_zero_accuracy(tmp_path):
    configs = [tiny_run(lr=1e9, max_steps=3).model_copy(update={"label": "exploding"}), tiny_run(max_steps=4)]
    out = tmp_path / "out"
    sweep = tmp_path / "sweep.py"
    sweep.write_text("from tests.conftest import tiny_run\nconfigs = [tiny_run(lr=1e9, max_steps=3)"
                     ".model_copy(update={'label': 'exploding'}), tiny_run(max_steps=4)]\n")
    result = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert [r["status"] for r in run_sweep(configs, out, quiet=True)] == ["diverged", "done"]
    (line,) = [line for line in result.output.splitlines() if "exploding" in line]
    assert "diverged" in line and "0.000" not in line, line


def test_a_worker_that_dies_while_idle_is_replaced_without_costing_a_run_an_attempt(tmp_path):
    from recallkit.sweep import process_pool
    from tests.test_sweep_crash import _command

    configs, started, outcomes = [tiny_run(seed=0, max_steps=2), tiny_run(seed=1, max_steps=2)], [], {}

    def start(config) -> None:
        started.append(config.run_id)
        if len(started) == 2:  # the only worker finished the first run and waits: kill it now
            (worker,) = [pid for pid in _descendants(os.getpid()) if "spawn_main" in (_command(pid) or "")
                         and "resource_tracker" not in (_command(pid) or "")]
            os.kill(worker, signal.SIGKILL)
            while _command(worker) is not None:
                time.sleep(0.01)

    said: list[str] = []
    process_pool.run_processes(configs, 1, start, lambda c, o: outcomes.setdefault(c.run_id, o),
                               lambda c, s: None, "cpu", str(tmp_path), 1.0, say=said.append)
    assert started == [configs[0].run_id, configs[1].run_id, configs[1].run_id]
    assert said == []  # no run's worker died: nothing was retried
    assert [outcomes[c.run_id]["status"] for c in configs] == ["done", "done"]


def test_idle_workers_exit_on_their_own_when_the_sweep_ends(tmp_path, monkeypatch):
    """An idle worker is asked to exit, not killed: a killed one leaves its multiprocessing semaphores
    to the resource tracker, which warned "leaked semaphore objects" at the end of `make demo`."""
    from recallkit.sweep import process_pool

    exitcodes, stop = [], process_pool._Worker.stop
    monkeypatch.setattr(process_pool._Worker, "stop",
                        lambda w: stop(w) or exitcodes.append(w.process.exitcode))
    configs, outcomes = [tiny_run(seed=0, max_steps=2), tiny_run(seed=1, max_steps=2)], {}
    process_pool.run_processes(configs, 2, lambda c: None, lambda c, o: outcomes.setdefault(c.run_id, o),
                               lambda c, s: None, "cpu", str(tmp_path), 1.0)
    assert [outcomes[c.run_id]["status"] for c in configs] == ["done", "done"]
    assert exitcodes == [0, 0]  # -9 when killed


# ---- links and half-written files in the output directory --------------------------------------------

@pytest.mark.parametrize("name", [LOCK_FILE, "results.sqlite", CHECKPOINT_DIR, "wandb"])
def test_a_link_where_a_sweep_writes_is_refused_and_its_target_untouched(tmp_path, name):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir() if name in (CHECKPOINT_DIR, "wandb") else victim.write_text("precious")
    (out / name).symlink_to(victim)
    (tmp_path / "sweep.py").write_text(SWEEP)
    message = _one_line(runner.invoke(app, ["run", str(tmp_path / "sweep.py"), "--out", str(out), "--quiet"]))
    assert f"{out / name} is a symbolic link" in message
    assert list(victim.iterdir()) == [] if victim.is_dir() else victim.read_text() == "precious"


def test_doctor_refuses_to_repair_through_a_linked_checkpoint_directory(finished, tmp_path):
    out, victim = tmp_path / "out", tmp_path / "models"
    shutil.copytree(finished, out)
    victim.mkdir()
    (victim / "weights.pt").write_text("not a checkpoint, not ours")
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    (out / CHECKPOINT_DIR).symlink_to(victim)
    assert "is a symbolic link" in _one_line(runner.invoke(app, ["doctor", str(out), "--repair"]))
    assert (victim / "weights.pt").read_text() == "not a checkpoint, not ours"


def test_a_report_replaces_links_and_a_failed_write_keeps_the_last_report(finished, tmp_path, monkeypatch):
    """The report's files are written whole or not at all: a sibling partial file and a rename, which
    replaces a link in place of writing through it."""
    out, victim = tmp_path / "out", tmp_path / "victim.png"
    shutil.copytree(finished, out)
    victim.write_text("precious")
    (out / "frontier.png").unlink(missing_ok=True)
    (out / "frontier.png").symlink_to(victim)
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert victim.read_text() == "precious" and not (out / "frontier.png").is_symlink()
    good = (out / "report.html").read_bytes()
    write_text = Path.write_text

    def half_then_full_disk(path, text, *args, **kwargs):
        write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full_disk)
    assert "No space left on device" in _one_line(runner.invoke(app, ["report", str(out)]))
    monkeypatch.undo()
    assert (out / "report.html").read_bytes() == good
    assert [p.name for p in out.iterdir() if p.name.endswith(".partial")] == []
    (out / "report.html.1234.partial").write_text("<html>half")  # as a SIGKILLed report leaves it
    result = runner.invoke(app, ["doctor", str(out), "--repair"])
    assert "report.html.1234.partial" in result.output and not (out / "report.html.1234.partial").exists()


@pytest.mark.parametrize("error", [sqlite3.OperationalError("database or disk is full"),
                                   OSError(28, "No space left on device")])
def test_a_full_disk_says_so_and_that_finished_runs_are_kept(monkeypatch, tmp_path, sweep, error):
    """SQLite's SQLITE_FULL was reported as a damaged database, with advice to restore a copy."""
    import recallkit.cli as cli

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "run_sweep", full)
    output = _one_line(runner.invoke(app, ["run", str(sweep), "--out", str(tmp_path / "out"), "--quiet"]))
    assert "free space and rerun: every finished run is kept" in output and "damaged" not in output, output
