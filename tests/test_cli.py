"""CLI: help, registry listing, one-line errors, run + report end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import recallkit as rk
from recallkit.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "report", "list", "demo"):
        assert command in result.output


def test_list_mixers_and_tasks():
    mixers = runner.invoke(app, ["list", "mixers"])
    assert mixers.exit_code == 0 and "attention" in mixers.output and "linear_attention" in mixers.output
    rows = {line.split()[0]: line.split()[1:4] for line in mixers.output.splitlines() if line.split()}
    # attention (1 head of 128): K and V, 2 * 128 numbers per token; MLA caches d_c + d_R = 40 per token
    assert rows["attention"] == [f"{256 * 1024:,}", f"{256 * 8192:,}", "256"]
    assert rows["mla"] == [f"{40 * 1024:,}", f"{40 * 8192:,}", "40"]
    assert rows["mamba2"][0] == rows["mamba2"][1] and rows["mamba2"][2] == "-"  # a fixed state, no KV cache
    # a long convolution of max_len 2048 reads 1k tokens and cannot read 8k: no state is printed there
    assert rows["base_conv"][:2] == [f"{128 * 1024:,}", "-"] and rows["hyena"][1] == "-"
    tasks = runner.invoke(app, ["list", "tasks"], terminal_width=400)
    assert tasks.exit_code == 0 and "mqar" in tasks.output
    lines = {line.split()[0]: line for line in tasks.output.splitlines() if line.split()}
    assert "``[start] A [sep] B [answer_sep]``" in lines["set_disjointness"]  # brackets are text
    assert "x_1 .. x_L and output" in lines["state_tracking"]  # " .. " ends no sentence
    policies = runner.invoke(app, ["list", "policies"])
    assert policies.exit_code == 0
    assert [line.split()[0] for line in policies.output.splitlines()] == list(rk.POLICIES)


def test_the_frontier_table_prints_bracketed_labels(monkeypatch):
    """An eviction row is labelled "model [policy]", which rich would read as markup and drop."""
    from rich.console import Console

    import recallkit.cli as cli
    from recallkit.report.common import FrontierPoint

    point = FrontierPoint(panel="mqar [N=8]", label="attention [h2o]", d_model=64, state_size=10,
                          accuracy=0.5, budget=None, prefill_tokens=None, lr=None, run_id="r", num_params=1,
                          wall_time=1.0, runs=1, model={})
    monkeypatch.setattr(cli, "frontier_points", lambda rows: [point])
    console = Console(record=True, width=200)
    console.print(cli._frontier_table([]))
    text = console.export_text()
    assert "attention [h2o]" in text and "mqar [N=8]" in text


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "configs = [dict(model=dict(vocab_size=64, mixer=dict(name='attention')),"
        " task=dict(name='mqar', vocab_size=64, seq_len=16, num_kv_pairs=8))]\n"
    )
    result = subprocess.run([sys.executable, "-m", "recallkit", "run", str(bad),
                             "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "needs seq_len >= 2*num_kv_pairs*(num_passes+1) = 32; got seq_len=16" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    result = runner.invoke(app, ["list", "colours"])  # a usage error, as a bad --executor
    assert result.exit_code == 2 and "'colours' is not one of" in result.output, result.output


@pytest.mark.parametrize("option", [["--device", "tpu"], ["--executor", "bogus"], ["--workers", "0"],
                                    ["--wandb-mode", "x"]])
def test_a_bad_option_value_is_a_usage_error_before_anything_runs(tmp_path, sweep_file, option):
    """Exit 2, as the README's exit codes say of a usage error, and no output directory."""
    result = runner.invoke(app, ["run", str(sweep_file()), "--out", str(tmp_path / "o"), *option])
    assert result.exit_code == 2 and "Invalid value for '" + option[0] in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_run_then_report_writes_database_figure_and_page(tmp_path, sweep_file):
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(sweep_file(steps=10)), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "best learning rate per model and width" in result.output
    for name in ("results.sqlite", "frontier.png", "report.html"):
        assert (out / name).stat().st_size > 0
    (out / "frontier.png").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "frontier.png").exists()


def test_tables_written_to_a_pipe_are_not_folded_at_80_columns():
    """Piped, rich fell back to 80 columns and folded model names to 4 characters a line."""
    import os

    from recallkit.cli import PIPED_WIDTH

    probe = [sys.executable, "-c", "from recallkit.cli import console; print(console.width)"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    assert subprocess.run(probe, capture_output=True, text=True, env=env).stdout.strip() == str(PIPED_WIDTH)
    env["COLUMNS"] = "100"  # the user's choice wins
    assert subprocess.run(probe, capture_output=True, text=True, env=env).stdout.strip() == "100"


def test_the_frontier_table_shows_budgets_groups_panels_and_counts_diverged_seeds(monkeypatch):
    """Eviction rows that differ only in budget printed as identical rows; a read-twice run's row sat
    apart from its panel; the table said 'diverged' where the page said '0.000 ... (4 seeds)'."""
    from dataclasses import replace

    from rich.console import Console

    import recallkit.cli as cli
    from recallkit.report.common import FrontierPoint

    base = FrontierPoint(panel="mqar T=32", label="attention", d_model=16, state_size=100, accuracy=0.5,
                         budget=None, prefill_tokens=None, lr=1e-3, run_id="r", num_params=1, wall_time=1.0,
                         runs=1, model={})
    points = [base, replace(base, panel="mqar T=64", label="mamba"),
              replace(base, panel="mqar T=32, KV eviction", label="h2o", budget=2, state_size=40),
              replace(base, panel="mqar T=32, KV eviction", label="h2o", budget=0.5, state_size=60),
              replace(base, label="blown", accuracy=0.0, seeds=(0.0,) * 4, interval=(0.0, 0.0), diverged=4),
              replace(base, label="shaky", seeds=(1.0, 0.5, 0.0), interval=(0.0, 1.0), diverged=1)]
    monkeypatch.setattr(cli, "frontier_points", lambda rows: points)
    console = Console(record=True, width=200)
    console.print(cli._frontier_table([]))
    text = console.export_text()
    lines = [line for line in text.splitlines() if "mqar" in line]
    expected = ["mqar T=32"] * 3 + ["mqar T=32, KV eviction"] * 2 + ["mqar T=64"]
    assert [line.split("│")[1].strip() for line in lines] == expected
    assert [line.split("│")[4].strip() for line in lines if "h2o" in line] == ["2", "0.5"]
    assert "diverged (4 seeds)" in text and "(3 seeds, 1 diverged)" in text


def test_the_frontier_table_names_what_tells_a_family_s_points_apart(monkeypatch):
    """Two vocabularies of one task shared a panel and printed as two identical rows; the model's and
    the task's vocab_size now name the row once, and the width stays in its own column."""
    from dataclasses import replace

    from rich.console import Console

    import recallkit.cli as cli
    from recallkit.report.common import FrontierPoint

    def point(vocab: int, width: int) -> FrontierPoint:
        return FrontierPoint(panel="mqar T=32", label="attn", d_model=width, state_size=100, accuracy=0.5,
                             budget=None, prefill_tokens=None, lr=1e-3, run_id="r", num_params=1,
                             wall_time=1.0, runs=1, model={"vocab_size": vocab, "d_model": width},
                             task={"name": "mqar", "vocab_size": vocab})

    points = [point(64, 16), point(128, 16), point(128, 32), replace(point(64, 16), panel="mqar T=64")]
    monkeypatch.setattr(cli, "frontier_points", lambda rows: points)
    console = Console(record=True, width=200)
    console.print(cli._frontier_table([]))
    models = [line.split("│")[2].strip() for line in console.export_text().splitlines() if "mqar" in line]
    assert models == ["attn vocab_size=64", "attn vocab_size=128", "attn vocab_size=128", "attn"]


def test_a_failed_run_removed_from_the_sweep_file_no_longer_fails_the_sweep(tmp_path, sweep_file):
    """Every later `run` exited 3 and promised to retry a failed run that was no longer in the file (and
    so never ran again); it is now named as left behind, and the exit code is the sweep's own."""
    from recallkit.sweep import Store, load_sweep

    sweep, out = sweep_file(steps=2), tmp_path / "out"
    assert runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"]).exit_code == 0
    removed = load_sweep(sweep)[-1].run_id
    with Store(out / "results.sqlite") as store:  # as a run whose model source has gone
        store.db.execute("UPDATE runs SET status = 'failed', error = 'gone' WHERE run_id = ?", (removed,))
        store.db.commit()
    failing = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"])
    assert failing.exit_code == 0, failing.output  # in the file: retried, and it runs
    with Store(out / "results.sqlite") as store:
        store.db.execute("UPDATE runs SET status = 'failed', error = 'gone' WHERE run_id = ?", (removed,))
        store.db.commit()
    sweep.write_text(sweep.read_text() + "configs = configs[:-1]\n")  # the failed run removed from the file
    again = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"])
    assert again.exit_code == 0, again.output
    assert "1 unfinished runs in" in again.output and "are no longer in" in again.output


def test_prune_forgets_unfinished_runs_no_longer_in_the_file_and_keeps_finished_ones(tmp_path, sweep_file):
    """`run --prune` deletes the pending and failed rows (and checkpoints) of configs removed from the
    sweep file; a finished run of a removed config, and every run still in the file, keep their rows."""
    from recallkit.sweep import Store, load_sweep

    sweep, out = sweep_file(steps=2), tmp_path / "out"
    assert runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet"]).exit_code == 0
    ids = [config.run_id for config in load_sweep(sweep)]
    assert len(ids) >= 3
    failed, running, finished = ids[-1], ids[-2], ids[-3]
    with Store(out / "results.sqlite") as store:
        store.db.execute("UPDATE runs SET status = 'failed', error = 'gone' WHERE run_id = ?", (failed,))
        store.db.execute("UPDATE runs SET status = 'running' WHERE run_id = ?", (running,))  # killed driver
        store.db.commit()
        before = {row["run_id"]: row for row in store.rows()}
    checkpoint = out / "checkpoints" / f"{failed}.pt"
    checkpoint.parent.mkdir(exist_ok=True)
    checkpoint.write_bytes(b"a checkpoint of the removed run")
    kept_checkpoint = out / "checkpoints" / f"{ids[0]}.pt"
    kept_checkpoint.write_bytes(b"a checkpoint of a run still in the file")
    sweep.write_text(sweep.read_text() + "configs = configs[:-3]\n")
    pruned = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert "pruned 2 unfinished runs" in pruned.output and "will not run" not in pruned.output
    with Store(out / "results.sqlite", readonly=True) as store:
        after = {row["run_id"]: row for row in store.rows()}
        evaluated = {row["run_id"] for row in store.evaluations()}
    assert set(after) == set(before) - {failed, running}
    assert after[finished]["metrics"] == before[finished]["metrics"] and finished in evaluated
    assert not {failed, running} & evaluated
    assert not checkpoint.exists() and kept_checkpoint.exists()
    quiet = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", "--prune"])
    assert quiet.exit_code == 0 and "pruned" not in quiet.output  # nothing to prune, nothing said
    with Store(out / "results.sqlite") as store:
        store.db.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", (finished,))
        store.db.commit()
    for refused in (["--halving", "--executor", "ray"], ["--wandb", "bad/name"]):  # checked before pruning
        result = runner.invoke(app, ["run", str(sweep), "--out", str(out), "--quiet", "--prune", *refused])
        assert result.exit_code == 1 and "pruned" not in result.output, result.output
        with Store(out / "results.sqlite", readonly=True) as store:
            assert finished in {row["run_id"] for row in store.rows()}
