"""Per-run training progress from every executor's workers, and W&B logging of finished runs (offline)."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from recallkit.cli import app
from recallkit.errors import RecallkitError
from recallkit.sweep import Store, load_sweep, run_sweep, wandb_log
from recallkit.sweep.wandb_log import WandbLogger
from tests.conftest import tiny_run


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_every_run_reports_its_training_progress_to_the_driver(tmp_path, executor, monkeypatch):
    monkeypatch.setattr("recallkit.sweep.runner.STEP_REPORT_SECONDS", 0.0)  # every step
    configs = [tiny_run(seed=s, max_steps=30) for s in range(3)]
    seen: dict[str, list[int]] = defaultdict(list)
    run_sweep(configs, tmp_path, executor=executor, workers=2, quiet=True,
              on_step=lambda config, s: seen[config.run_id].append(s["step"]))
    assert set(seen) == {c.run_id for c in configs}
    for steps in seen.values():
        assert steps == sorted(steps) and steps[-1] == 30 and len(steps) >= 2  # live, not only at the end


def test_wandb_offline_logs_each_finished_run_once_with_curve_and_summary(tmp_path):
    configs = [tiny_run(seed=0), tiny_run(seed=0, lr=1e9, max_steps=3)]  # the second diverges
    run_sweep(configs, tmp_path, quiet=True, on_outcome=WandbLogger("recallkit-test", tmp_path))
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert {r.name.rsplit("-", 1)[-1] for r in runs} == {c.run_id for c in configs}
    for run in runs:  # offline runs are one protobuf log: its records carry the keys as plain bytes
        (log,) = run.glob("*.wandb")
        data = log.read_bytes()
        assert all(key in data for key in (b"loss", b"state_size", b"eval/", b"status", b"d_model"))
    done = next(r for r in runs if configs[0].run_id in r.name).glob("*.wandb")
    assert b"accuracy" in next(done).read_bytes()  # the curve's test accuracy (the diverged run has none)
    run_sweep(configs, tmp_path, quiet=True, on_outcome=WandbLogger("recallkit-test", tmp_path))
    assert sorted((tmp_path / "wandb").glob("offline-run-*")) == runs  # resumed sweep: nothing relogged


def test_cli_wandb_option_and_errors(tmp_path, sweep_file, monkeypatch):
    result = CliRunner().invoke(app, ["run", str(sweep_file(steps=2)), "--out", str(tmp_path / "out"),
                                      "--quiet",
                                      "--wandb", "recallkit-test"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "wandb").glob("offline-run-*"))) == 8
    with pytest.raises(ValueError, match="unknown W&B mode 'cloud'"):
        WandbLogger("p", tmp_path, mode="cloud")

    def missing():
        raise RecallkitError(wandb_log.INSTALL_HINT)

    monkeypatch.setattr(wandb_log, "_wandb", missing)
    result = CliRunner().invoke(app, ["run", str(sweep_file(steps=2)), "--out", str(tmp_path / "b"),
                                      "--wandb", "p"])
    assert result.exit_code == 1 and "needs `pip install recallkit[wandb]`" in result.output


def test_online_wandb_without_a_login_is_refused_before_any_run(tmp_path, sweep_file, monkeypatch):
    """Without a key the first finished run's upload failed with a traceback (or waited at W&B's
    prompt in a terminal) after it had trained; now the sweep does not start."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    result = CliRunner().invoke(app, ["run", str(sweep_file(steps=2)), "--out", str(tmp_path / "out"),
                                      "--wandb", "p", "--wandb-mode", "online"])
    assert result.exit_code == 1 and result.output.startswith("error: W&B online mode needs a login")
    assert result.output.count("\n") == 1 and not (tmp_path / "out" / "results.sqlite").exists()
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_log.has_wandb_login()
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_log.has_wandb_login()


def test_the_sweep_bar_has_an_eta_when_runs_take_minutes():
    """rich estimated the speed over the last 30 s, where runs of minutes finish none: no ETA."""
    from recallkit.sweep.runner import _progress

    now = [0.0]
    progress = _progress(quiet=True)
    progress.get_time = lambda: now[0]
    task = progress.add_task("sweep", total=4, info="")
    for finished in (120.0, 240.0):  # runs of two minutes each
        now[0] = finished
        progress.advance(task)
    assert progress.tasks[0].time_remaining == pytest.approx(2 * 120.0, rel=0.01)


def _logged_runs(out) -> set[str]:
    """Run ids of the offline W&B runs with a log (a driver killed mid-init leaves an empty folder)."""
    logged = set()
    for run in (out / "wandb").glob("offline-run-*"):  # a "-1" suffix: the same id again in one second
        if any(log.stat().st_size > 100 for log in run.glob("*.wandb")):
            logged.add(re.fullmatch(r"offline-run-\d{8}_\d{6}-(\w+?)(-\d+)?", run.name)[1])
    return logged


@pytest.mark.parametrize("project", ["bad/name", "bad#name?", "x" * 200, " "])
def test_a_bad_project_name_is_refused_before_any_run(tmp_path, sweep_file, project):
    """W&B checks the name at a run's init: the first run trained, then a 63-line traceback stopped
    the sweep, and every rerun trained one more run and crashed again."""
    result = CliRunner().invoke(app, ["run", str(sweep_file(steps=2)), "--out", str(tmp_path / "out"),
                                      "--wandb", project])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "project name" in result.output and not (tmp_path / "out" / "results.sqlite").exists()


def test_a_wandb_error_never_stops_the_sweep_and_the_next_sweep_logs_what_it_missed(
        tmp_path, sweep_file, monkeypatch):
    """A W&B error while logging (a full disk, an unreachable server) stopped the sweep after the run
    that had finished, and runs finished in such attempts, or by a driver killed while logging them,
    were never logged; failed runs were logged, and logged again by the rerun that retried them."""
    import wandb

    sweep, out = sweep_file(steps=2), tmp_path / "out"
    init = wandb.init
    calls = []

    def failing(*args, **kwargs):
        calls.append(kwargs["id"])
        if len(calls) == 2:
            raise wandb.errors.CommError("the server is unreachable")
        return init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", failing)
    first = CliRunner().invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", "--wandb", "p"])
    assert first.exit_code == 0, first.output
    assert first.output.count("W&B logging of") == 1
    assert "CommError: the server is unreachable" in first.output
    assert len(calls) == 2 and len(_logged_runs(out)) == 1  # paused after the error: no init per run
    ids = [config.run_id for config in load_sweep(sweep)]
    ledger = out / "wandb" / "logged.txt"
    assert ledger.read_text() == f"{calls[0]} p\n"
    ledger.write_text("")  # as a driver killed while logging its first run
    monkeypatch.setattr(wandb, "init", init)
    with Store(out / "results.sqlite") as store:  # a run that failed is not logged
        store.db.execute("UPDATE runs SET status = 'failed', error = 'boom' WHERE run_id = ?", (ids[-1],))
        store.db.commit()
    again = CliRunner().invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", "--wandb", "p"])
    assert again.exit_code == 0, again.output
    assert "W&B: logged 7 finished runs that an earlier sweep had not logged" in again.output
    assert _logged_runs(out) == set(ids)
    assert sorted(ledger.read_text().splitlines()) == sorted(f"{run_id} p" for run_id in ids)
    folders = sorted((out / "wandb").glob("offline-run-*"))
    quiet = CliRunner().invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", "--wandb", "p"])
    assert quiet.exit_code == 0 and sorted((out / "wandb").glob("offline-run-*")) == folders



def test_a_failed_run_is_left_to_its_retry(tmp_path):
    logger = WandbLogger("p", tmp_path)
    config = tiny_run(seed=0)
    logger(config, {"status": "failed", "error": "boom", "metrics": None})
    assert not (tmp_path / "wandb").exists() or not list((tmp_path / "wandb").glob("offline-run-*"))
    assert logger.logged() == set()


def test_the_list_of_logged_runs_is_per_project_and_disabled_mode_lists_nothing(tmp_path, sweep_file):
    """Runs of a --wandb-mode disabled sweep were listed as logged, and a later offline sweep never
    logged them; a run logged to project A counted as logged to B; a directory logged before the list
    existed was logged again whole."""
    sweep, out = sweep_file(steps=2), tmp_path / "out"
    ids = {config.run_id for config in load_sweep(sweep)}

    def run(*args):
        result = CliRunner().invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", *args])
        assert result.exit_code == 0, result.output
        return result.output

    run()  # no W&B
    assert not (out / "wandb").exists() and WandbLogger("a", out, mode="disabled").catch_up(
        load_sweep(sweep), run_sweep(load_sweep(sweep), out, quiet=True)) == 0
    assert not (out / "wandb" / "logged.txt").exists()
    assert "logged 8 finished runs" in run("--wandb", "a")
    assert "W&B: logged" not in run("--wandb", "a")
    assert "logged 8 finished runs" in run("--wandb", "b") and _logged_runs(out) == ids
    folders = sorted((out / "wandb").glob("offline-run-*"))
    (out / "wandb" / "logged.txt").unlink()  # as a directory logged by a version without the list
    assert "W&B: logged" not in run("--wandb", "a")
    assert sorted((out / "wandb").glob("offline-run-*")) == folders
