"""Fault injection (issue 26): foreign and read-only databases, unwritable paths, flipped bytes in
checkpoints and prefix files, killed workers. Each bad input gets one line and a documented exit
code; every finished run and every byte of a foreign file stay as they were."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recallkit.cli import app
from recallkit.errors import RecallkitError
from recallkit.sweep import Store, run_sweep
from tests.conftest import tiny_run

runner = CliRunner()
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
        assert sorted(p.name for p in directory.iterdir() if p.name != "results.lock") == files, name


def test_a_results_database_of_another_schema_version_is_refused_before_writing(tmp_path):
    with Store(tmp_path / "results.sqlite") as store:
        store.db.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
        store.db.commit()
    before = (tmp_path / "results.sqlite").read_bytes()
    with pytest.raises(RecallkitError, match="schema v9, expected v1"):
        run_sweep([tiny_run()], tmp_path, quiet=True)
    assert (tmp_path / "results.sqlite").read_bytes() == before


def test_a_half_created_store_and_an_empty_file_are_completed_not_refused(tmp_path):
    db = tmp_path / "results.sqlite"
    db.write_bytes(b"")
    with Store(db) as store:
        store.add([tiny_run()])
    with contextlib.closing(sqlite3.connect(db)) as connection:  # a store killed before its meta row
        connection.execute("DELETE FROM meta")
        connection.commit()
    with Store(db) as store:
        assert len(store.rows()) == 1


# ---- read-only use (item 5) ------------------------------------------------------------------------

def test_report_and_doctor_work_on_a_read_only_directory(finished, tmp_path):
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
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


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
