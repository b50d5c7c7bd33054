"""Per-run training progress from every executor's workers, and W&B logging of finished runs (offline)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from typer.testing import CliRunner

from recallkit.cli import app
from recallkit.errors import RecallkitError
from recallkit.sweep import run_sweep, wandb_log
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
