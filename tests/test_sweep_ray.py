"""Ray executor: end to end on a local 2-CPU Ray, failing runs, worker crashes, the missing-Ray error.

One local Ray serves the module (starting one takes 10-20 s on a loaded 2-core machine); the sweep
then uses that connection and leaves it open. Starting and stopping its own Ray is covered by the
kill-and-resume test in test_sweep_crash.py.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
from typer.testing import CliRunner

from recallkit.cli import app
from recallkit.config import RunConfig
from recallkit.errors import RecallkitError
from recallkit.sweep import Store, load_sweep, ray_executor, run_sweep
from recallkit.sweep.ray_executor import INSTALL_HINT, RayOptions
from tests.conftest import tiny_run


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs for the whole module."""
    if os.environ.get("RECALLKIT_REQUIRE_RAY") == "1":  # CI: `make test` installs the extra, so run
        import ray
    else:
        ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture
def in_flight(monkeypatch) -> list[int]:
    """The number of ``running`` rows right after each run is marked running."""
    counts: list[int] = []
    mark_running = Store.mark_running

    def counting(self: Store, run_id: str) -> None:
        mark_running(self, run_id)
        counts.append(self.db.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0])

    monkeypatch.setattr(Store, "mark_running", counting)
    return counts


def test_ray_matches_serial_records_failures_and_never_runs_more_than_the_cluster_fits(
    local_ray, tmp_path, sweep_file, in_flight
):
    configs = load_sweep(sweep_file())[::3]  # both mixers, both widths, both learning rates
    serial = run_sweep(configs, tmp_path / "serial", quiet=True)
    on_cuda = tiny_run(device="cuda")  # a run reserving no GPU sees none, even on a GPU machine
    rows = run_sweep(configs + [on_cuda], tmp_path / "ray", executor="ray", workers=8, quiet=True)
    assert max(in_flight) == 2  # 8 workers asked for, 2 CPUs at 1 per run
    by_id = {r["run_id"]: r for r in rows}
    assert len(rows) == len(by_id) == 4
    for expected in serial:
        got = by_id[expected["run_id"]]
        assert got["status"] == "done" and got["metrics"]["device"] == "cpu"
        assert (got["metrics"]["accuracy"], got["state_size"], got["num_params"]) == (
            expected["metrics"]["accuracy"], expected["state_size"], expected["num_params"])
    failed = by_id[on_cuda.run_id]
    assert failed["status"] == "failed" and "CUDA is not available" in failed["error"]
    again = run_sweep(configs, tmp_path / "ray", executor="ray", quiet=True)
    assert {r["run_id"]: r["updated_at"] for r in again if r["status"] == "done"} == {
        c.run_id: by_id[c.run_id]["updated_at"] for c in configs}  # finished runs are not rerun


def test_each_run_reserves_num_cpus_and_uses_them_as_torch_threads(local_ray, tmp_path, monkeypatch,
                                                                    in_flight):
    real = ray_executor.run_in_worker

    def reporting_threads(*args):  # a closure: Ray ships it by value to the workers
        import torch

        outcome = real(*args)
        outcome["metrics"]["torch_threads"] = torch.get_num_threads()
        return outcome

    monkeypatch.setattr(ray_executor, "run_in_worker", reporting_threads)
    rows = run_sweep([tiny_run(seed=s) for s in range(2)], tmp_path, executor="ray", workers=2, quiet=True,
                     ray_options=RayOptions(num_cpus=2))
    assert [r["metrics"]["torch_threads"] for r in rows] == [2, 2]
    assert max(in_flight) == 1  # one run of 2 CPUs fills the 2-CPU Ray


def test_a_crashed_worker_is_retried_a_bounded_number_of_times_then_recorded(local_ray, tmp_path,
                                                                              monkeypatch):
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    real = ray_executor.run_in_worker

    def crashing(config_json, *args):
        lr = RunConfig.model_validate_json(config_json).train.lr
        with open(attempts / str(lr), "a") as log:
            log.write("attempt\n")
        tries = len((attempts / str(lr)).read_text().splitlines())
        if lr == 0.5 or (lr == 0.25 and tries == 1):  # always, or only the first time
            os._exit(3)  # the worker process dies mid-run, as on a segfault or an OOM kill
        return real(config_json, *args)

    monkeypatch.setattr(ray_executor, "run_in_worker", crashing)
    rows = run_sweep([tiny_run(lr=0.5), tiny_run(lr=0.25)], tmp_path / "out", executor="ray", workers=2,
                     quiet=True, ray_options=RayOptions(max_retries=1))
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert rows[0]["error"].startswith("Ray worker failure after 2 attempts: WorkerCrashedError")
    counts = {name: len((attempts / name).read_text().splitlines()) for name in ("0.5", "0.25")}
    assert counts == {"0.5": 2, "0.25": 2}  # bounded: 1 + max_retries attempts at most


def test_the_cli_runs_a_sweep_on_ray(local_ray, tmp_path, sweep_file):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(sweep_file(steps=10)), "--out", str(out), "--quiet",
                                      "--executor", "ray", "--workers", "2", "--num-cpus", "1"])
    assert result.exit_code == 0, result.output
    with Store(out / "results.sqlite", create=False) as store:
        assert [r["status"] for r in store.rows()] == ["done"] * 8


def test_without_ray_installed_the_executor_is_one_clear_error(tmp_path, monkeypatch, sweep_file):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RecallkitError) as error:
        run_sweep([tiny_run()], tmp_path / "api", executor="ray", quiet=True)
    assert str(error.value) == INSTALL_HINT
    assert not (tmp_path / "api").exists()  # refused before anything was written
    result = CliRunner().invoke(app, ["run", str(sweep_file()), "--out", str(tmp_path / "cli"), "--quiet",
                                      "--executor", "ray"])
    assert result.exit_code == 1 and result.output == f"error: {INSTALL_HINT}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--num-cpus", "2"], "--ray-address, --num-cpus and --num-gpus need --executor ray"),
    (["--executor", "ray", "--num-cpus", "0"], "num_cpus per run must be > 0, got 0.0"),
    (["--executor", "ray", "--num-gpus", "-1"], "num_gpus per run must be >= 0, got -1.0"),
    (["--executor", "ray", "--device", "cuda"],
     "device cuda with the ray executor needs num_gpus > 0 per run"),
])
def test_bad_ray_options_are_one_line_errors(tmp_path, sweep_file, args, message):
    result = CliRunner().invoke(app, ["run", str(sweep_file()), "--out", str(tmp_path / "out"), "--quiet",
                                      *args])
    assert result.exit_code == 1 and result.output == f"error: {message}\n"
    assert not (tmp_path / "out").exists()


def test_an_address_nothing_listens_at_fails_at_once():
    with pytest.raises(RecallkitError, match="cannot reach a Ray cluster at 127.0.0.1:1: "):
        ray_executor._check_reachable("127.0.0.1:1")
    with pytest.raises(ValueError, match="max_retries must be >= 0"):
        RayOptions(max_retries=-1)
