"""Command line: thin typer wrappers around library functions; errors are one line and exit 1.

Exit codes (README, "Exit codes"): 0 success; 1 an error (one line on stderr); 2 a usage error;
3 ``run``/``demo`` finished but some runs failed; 4 ``doctor`` found problems it did not repair;
130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import tempfile
import threading
from functools import wraps
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from recallkit.atomic import write_whole
from recallkit.contract import check_model, models_to_check
from recallkit.errors import RecallkitError, first_line, one_line
from recallkit.inference.kv_memory import default_kv_numbers_per_token, default_state_size
from recallkit.kv import POLICIES
from recallkit.mixers import MIXERS
from recallkit.report import frontier_points, write_compare, write_report
from recallkit.report.common import accuracy_text, in_panel_order
from recallkit.report.hover import point_names
from recallkit.sweep import load_sweep, run_sweep
from recallkit.sweep.directory import DISK_FULL_HINT, describe, make_directory
from recallkit.sweep.doctor import diagnose
from recallkit.sweep.ray_executor import RayOptions
from recallkit.tasks import TASKS

EXIT_ERROR = 1
EXIT_RUNS_FAILED = 3
"""``run`` / ``demo``: the sweep finished and its report was written, but some runs are ``failed``."""
EXIT_PROBLEMS = 4
"""``doctor``: it found stale or corrupt rows, corrupt checkpoints or leftover files, left unrepaired."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, the shell's convention)."""

app = typer.Typer(help="recallkit: in-context recall vs inference state of sequence models.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
PIPED_WIDTH = 160
"""Columns of the tables when output goes to a file or a pipe (rich would fold them at 80)."""
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH)


def _one_line_errors(command):
    """Turn user-facing errors into ``error: ...`` on stderr and exit code 1, Ctrl-C into one line
    and exit code 130."""
    @wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting: still one line
            resumes = command.__name__ in ("run", "demo")
            print("interrupted" + (": the runs in flight stopped; the next `recallkit run` resumes them from "
                                   "their last checkpoint (Ray runs restart); finished runs are kept"
                                   if resumes else ""),
                  file=sys.stderr)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except ValidationError as error:
            message = one_line(error)
        except (RecallkitError, ValueError) as error:
            message = str(error)
        except OSError as error:  # e.g. a file the OS refuses to write: the reason and the path
            message = describe(error)
        except sqlite3.DatabaseError as error:  # a results database damaged inside (its schema read fine)
            message = f"the results database is damaged ({error}); restore a copy or use another --out"
            if "disk is full" in str(error):  # SQLITE_FULL: the database is whole, the disk is not
                message = f"the disk is full ({error}); {DISK_FULL_HINT}"
        print(f"error: {first_line(message)}", file=sys.stderr)
        raise typer.Exit(EXIT_ERROR)
    return wrapper


def _frontier_table(rows: list[dict]) -> Table:
    table = Table(title="best learning rate per model and width",
                  caption="accuracy: the mean over seeds [95% interval] (seeds); time: the best seed's run")
    points = frontier_points(rows)
    budgets = any(p.budget is not None for p in points)
    for column in ("setting", "model", "width", *(["KV budget"] if budgets else []), "state size", "accuracy",
                   "time (s)"):
        left = column in ("setting", "model")
        table.add_column(column, justify="left" if left else "right", overflow="fold", no_wrap=not left)
    names = dict(zip(map(id, points), point_names(points, omit=("d_model",))))
    for p in in_panel_order(points):
        budget = [] if not budgets else ["" if p.budget is None else f"{p.budget:g}"]
        time = f"{p.wall_time:.1f}" if p.wall_time else ""
        name = escape(names[id(p)])  # "attention [h2o]" is text, not markup
        table.add_row(escape(p.panel), name, str(p.d_model or "-"), *budget,
                      f"{p.state_size:,}", escape(accuracy_text(p)), time)
    return table


def _run_and_report(sweep: Path, out: Path, executor: str, workers: int, quiet: bool,
                    device: str | None = None, ray_options: RayOptions | None = None,
                    wandb_project: str | None = None, wandb_mode: str = "offline",
                    halving: bool = False, pack: bool = False, prune: bool = False) -> None:
    configs = load_sweep(sweep)
    on_outcome = None
    if wandb_project is not None:
        from recallkit.sweep.wandb_log import WandbLogger

        on_outcome = WandbLogger(wandb_project, out, wandb_mode)
    if prune:  # after every check: a run refused for its options deletes nothing
        from recallkit.sweep.prune import prune_removed
        from recallkit.sweep.runner import check_run_options

        check_run_options(configs, executor, workers, device, ray_options, halving, pack)
        pruned = prune_removed(out, configs)
        if not quiet or pruned:
            console.print(f"pruned {len(pruned)} unfinished runs no longer in {escape(str(sweep))}"
                          + (f": {_some(pruned)}" if pruned else ""))
    if not quiet:
        console.print(f"{len(configs)} runs from {sweep} -> {out}")
    rows = run_sweep(configs, out, executor=executor, workers=workers, quiet=quiet, device=device,
                     ray_options=ray_options, on_outcome=on_outcome, halving=halving, pack=pack)
    if on_outcome is not None and (caught_up := on_outcome.catch_up(configs, rows)):
        console.print(f"W&B: logged {caught_up} finished runs that an earlier sweep had not logged")
    in_sweep = {config.run_id for config in configs}
    failed = [r for r in rows if r["status"] == "failed" and r["run_id"] in in_sweep]
    left = [r for r in rows if r["run_id"] not in in_sweep and r["status"] not in ("done", "diverged")]
    console.print(_frontier_table(rows))
    for row in failed:
        error = escape(f"{row['run_id']} {row['label']}: {first_line(row['error'])}")
        console.print(f"[red]failed[/red] {error}")
    png, page = write_report(out)
    console.print(f"results: {out / 'results.sqlite'}\nfigure:  {png}\nreport:  {page}")
    if left:  # removed from the sweep file: the store keeps them, nothing will run them
        console.print(f"{len(left)} unfinished runs in {escape(str(out))} are no longer in "
                      f"{escape(str(sweep))} and will not run (the report still lists them; --prune "
                      "forgets them)")
    if failed:
        console.print(f"{len(failed)} of {len(in_sweep)} runs failed (exit code {EXIT_RUNS_FAILED}); "
                      "`recallkit run` retries them")
        raise typer.Exit(EXIT_RUNS_FAILED)


@app.command()
@_one_line_errors
def run(
    sweep: Annotated[Path, typer.Argument(help="Python file exporting `configs: list[RunConfig]`")],
    out: Annotated[Path, typer.Option(help="results directory")],
    executor: Annotated[Literal["serial", "process", "ray"],
                        typer.Option(help="serial | process | ray")] = "serial",
    workers: Annotated[int, typer.Option(min=1, help="process workers; with ray, the most runs at a time "
                                                     "(fewer if the cluster fits fewer)")] = 2,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    device: Annotated[Literal["auto", "cpu", "cuda"] | None,
                      typer.Option(help="auto | cpu | cuda for every run (default: each run's train.device); "
                                        "does not change run identities")] = None,
    ray_address: Annotated[str | None, typer.Option(help="ray: cluster to use (host:port, ray://host:port, "
                                                         "auto); default: RAY_ADDRESS, "
                                                         "else a local Ray")] = None,
    num_cpus: Annotated[float | None, typer.Option(help="ray: CPUs per run, also its torch threads",
                                                   show_default="1")] = None,
    num_gpus: Annotated[float | None, typer.Option(help="ray: GPUs per run", show_default="0")] = None,
    wandb: Annotated[str | None, typer.Option(help="log each finished run to this W&B project "
                                                   "(needs recallkit\\[wandb])")] = None,
    wandb_mode: Annotated[Literal["offline", "online"],
                          typer.Option(help="offline (files in OUT/wandb, no network) | online")] = "offline",
    halving: Annotated[bool, typer.Option(help="stop a run far behind the best finished run that differs "
                                               "from it only in learning rate (serial / process)")] = False,
    pack: Annotated[bool, typer.Option(help="train runs of one model, task and batch size that differ in "
                                            "lr, seed, ... as one packed model (serial; for GPUs: "
                                            "slower on a small CPU)")] = False,
    prune: Annotated[bool, typer.Option(help="first forget the pending and failed runs no longer in the "
                                             "sweep file (finished runs are kept)")] = False,
) -> None:
    """Run (or resume) a sweep into OUT/results.sqlite and write the report."""
    ray_options = None
    if executor == "ray":
        ray_options = RayOptions(address=ray_address, num_cpus=1 if num_cpus is None else num_cpus,
                                 num_gpus=0 if num_gpus is None else num_gpus)
    elif (ray_address, num_cpus, num_gpus) != (None, None, None):
        raise RecallkitError("--ray-address, --num-cpus and --num-gpus need --executor ray")
    _run_and_report(sweep, out, executor, workers, quiet, device, ray_options, wandb, wandb_mode, halving,
                    pack, prune)


def _some(run_ids: list[str], shown: int = 5) -> str:
    more = f" and {len(run_ids) - shown} more" if len(run_ids) > shown else ""
    return ", ".join(run_ids[:shown]) + more


@app.command()
@_one_line_errors
def doctor(
    out: Annotated[Path, typer.Argument(help="results directory of a sweep")],
    repair: Annotated[bool, typer.Option(help="reset stale `running` and corrupt rows so they rerun; "
                                              "delete bad checkpoints and leftover files")] = False,
) -> None:
    """Check OUT/results.sqlite and OUT/checkpoints for what a crash leaves behind (stale running rows,
    corrupt rows, corrupt checkpoints, leftover partial files). Exits 4 when it found problems it did
    not repair."""
    found = diagnose(out, repair=repair)
    counts = ", ".join(f"{n} {status}" for status, n in found.counts.items() if n) or "no runs"
    console.print(f"{found.path}: {counts}; integrity {found.integrity}"
                  + ("; a sweep is writing it now" if found.sweep_running else ""))
    if found.stale:
        console.print(f"{len(found.stale)} stale running rows (their driver is gone): {_some(found.stale)}")
    if found.corrupt:
        console.print(f"{len(found.corrupt)} rows with corrupt JSON: {_some(found.corrupt)}")
    for path, problem in found.bad_checkpoints.items():
        console.print(f"bad checkpoint: {problem}", highlight=False, soft_wrap=True)
    if found.leftovers:
        console.print(f"{len(found.leftovers)} leftover files (partial writes, set-aside checkpoints): "
                      f"{_some([p.name for p in found.leftovers])}", highlight=False, soft_wrap=True)
    if found.repaired:
        console.print(f"repaired {found.repaired} problems: their runs rerun on the next `recallkit run`")
    elif not found.healthy and not repair:
        console.print("run `recallkit doctor OUT --repair` to fix them")
    if found.healthy or (repair and found.integrity == "ok"):
        console.print("ok")
    else:
        raise typer.Exit(EXIT_PROBLEMS)


@app.command()
@_one_line_errors
def report(
    dirs: Annotated[list[Path], typer.Argument(metavar="DIR",
                                               help="results directory of a sweep; "
                                                    "two or more: compare them")],
    out: Annotated[Path | None, typer.Option(help="where to write the files "
                                                  "(default: the first directory)")] = None,
) -> None:
    """Write DIR/frontier.png and DIR/report.html from DIR/results.sqlite; with several directories,
    compare.png and compare.html with all of them on one frontier (labels prefixed by directory)."""
    png, page = write_report(dirs[0], dest=out) if len(dirs) == 1 else write_compare(dirs, out)
    console.print(f"figure: {png}\nreport: {page}")


@app.command("list")
@_one_line_errors
def list_registry(what: Annotated[Literal["mixers", "tasks", "policies"], typer.Argument()]) -> None:
    """List the registered mixers (with their state at reference lengths), tasks or eviction policies."""
    registries = {"mixers": MIXERS, "tasks": TASKS, "policies": POLICIES}
    mixers = what == "mixers"
    if mixers:
        console.print("state: numbers per sequence and layer after T tokens (default config, d_model=128; "
                      "- = that config cannot read T tokens); KV/token: cache numbers one token adds (- = no "
                      "KV cache)", soft_wrap=True)
        console.print(f"{'mixer':<20} {'T=1k':>9} {'T=8k':>9} {'KV/token':>8}  description", soft_wrap=True)
    for key, cls in registries[what].items():
        doc = _first_sentence(cls.__doc__ or "")
        if mixers:
            kv = default_kv_numbers_per_token(key, d_model=128)
            small, large = (_count(default_state_size(key, n, d_model=128)) for n in (1024, 8192))
            console.print(f"{key:<20} {small:>9} {large:>9} {'-' if kv is None else kv:>8}  {doc}",
                          highlight=False, soft_wrap=True, markup=False)
        else:
            console.print(f"{key:<20} {doc}", highlight=False, soft_wrap=True, markup=False)


def _count(number: int | None) -> str:
    return "-" if number is None else f"{number:,}"


def _first_sentence(doc: str) -> str:
    """The docstring's first sentence, on one line."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\.)\.\s(?!\.)", paragraph)  # not "et al.", "e.g.", " .. "
    return paragraph if end is None else paragraph[: end.start() + 1]


@app.command("check-model")
@_one_line_errors
def check_model_command(
    source: Annotated[str, typer.Argument(help="model directory, .gguf file, smollm2-135m, tiny:<arch>, "
                                               "or a results directory (each run's architecture)")],
    length: Annotated[int, typer.Option(help="tokens per test sequence")] = 24,
    batch: Annotated[int, typer.Option(help="test sequences")] = 3,
    seed: int = 0,
) -> None:
    """Check the model contract: forward == prefill == step loop, split-resume, batch independence,
    state_size == the real state. Exits 1 when a check fails."""
    checked = models_to_check(source, seed)
    failed = False
    for label, load in checked:
        try:
            model = load()
        except RecallkitError as error:
            if len(checked) == 1:  # a source alone: its one-line error
                raise
            reason = escape(first_line(str(error)))
            console.print(f"[bold]{escape(label)}[/bold]\n  FAIL {'load':<22} {reason}", highlight=False,
                          soft_wrap=True)
            failed = True
            continue
        console.print(f"[bold]{escape(label)}[/bold]")
        for check in check_model(model, length=length, batch_size=batch, seed=seed):
            console.print("  " + check.line(), highlight=False)
            failed |= not check.passed
    if failed:
        raise typer.Exit(1)


@app.command()
@_one_line_errors
def demo(
    out: Annotated[Path, typer.Option(help="results directory")] = Path("runs/quickstart"),
    sweep: Annotated[Path, typer.Option(help="the demo sweep file")] = Path("sweeps/quickstart.py"),
    workers: Annotated[int, typer.Option(min=1, help="process workers (1 = serial)")] = 2,
    quiet: bool = False,
) -> None:
    """Run the quickstart sweep (from the repository root) and write its report."""
    if not sweep.is_file():
        raise RecallkitError(f"{sweep} not found: run `recallkit demo` from the repository root")
    _run_and_report(sweep, out, "process" if workers > 1 else "serial", workers, quiet)


def _bench_tables(result: dict) -> list[Table]:
    def table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> Table:
        out = Table(title=title)
        for header, _, _ in columns:
            out.add_column(header, justify="right")
        for row in rows:
            if "error" in row:
                out.add_row(*(str(row.get(key, "")) for _, key, _ in columns[:2]), row["error"])
                continue
            out.add_row(*("" if row.get(key) is None else format(row[key], fmt) for _, key, fmt in columns))
        return out

    peak = result["matmul_peak_gflops"]
    return [
        table(f"kernel prefill, batch 1, 8 heads (matmul peak {peak:.1f} GFLOP/s)", result["kernels"],
              [("kernel", "kernel", ""), ("N", "N", "d"), ("ms", "ms", ".2f"),
               ("x SDPA", "speedup_vs_sdpa", ".2f"), ("x loop", "speedup_vs_loop", ".1f"),
               ("GFLOP/s", "gflops", ".1f"),
               ("% peak", "pct_peak", ".0f")]),
        table("mixer prefill vs token loop (batch 1)", result["mixers"],
              [("mixer", "mixer", ""), ("N", "N", "d"), ("prefill ms", "prefill_ms", ".2f"),
               ("loop ms", "loop_ms", ".1f"), ("prefill speed-up", "prefill_speedup", ".1f")]),
        table("training step, 2 layers (MFU: matmul FLOP/s as % of the peak; packed: 4 models as one)",
              result["training"],
              [("mixer", "mixer", ""), ("T", "seq_len", "d"), ("batch", "batch_size", "d"),
               ("ms/step", "ms_per_step", ".1f"), ("tokens/s", "tokens_per_s", ",.0f"),
               ("MFU %", "mfu", ".1f"), ("packed MFU %", "packed_mfu", ".1f"),
               ("x packed", "packed_speedup", ".2f")]),
    ] + [table("kernels vs transformers' PyTorch peers (8 heads of 64; error: max |y - y_ref| in float32, "
               "vs the float64 token loop)", peers,
               [("kernel", "kernel", ""), ("batch", "batch", "d"), ("N", "N", "d"), ("ms", "ms", ".1f"),
                ("peer ms", "peer_ms", ".1f"), ("x peer", "speedup_vs_peer", ".2f"),
                ("error", "max_error", ".1e"), ("peer error", "peer_max_error", ".1e")])
         for peers in [result.get("peers")] if peers]


@app.command()
@_one_line_errors
def bench(
    quick: Annotated[bool, typer.Option(help="tiny sizes: a smoke run in seconds")] = False,
    out: Annotated[Path, typer.Option(help="JSON file for the results")] = Path("runs/bench.json"),
    pretrained: Annotated[str | None, typer.Option(help="instead: a pretrained model's prefill and decode "
                                                        "(a source of recallkit.hf.load_model)")] = None,
    batch: Annotated[int | None, typer.Option(help="with --pretrained: sequences", show_default="8")] = None,
    length: Annotated[int | None, typer.Option(help="with --pretrained: prefill tokens per sequence",
                                               show_default="512, or what the context holds")] = None,
) -> None:
    """Benchmark kernels and mixers on this machine: speed-ups vs SDPA, % of matmul peak, tokens/s."""
    from recallkit.bench import run_bench

    if pretrained is None and (batch, length) != (None, None):
        raise typer.BadParameter("--batch and --length set the --pretrained benchmark; the kernel and mixer "
                                 "benchmark has its own sizes")
    make_directory(out.parent, "directory of --out")  # before minutes of benchmarking, not after
    if out.is_dir():
        raise RecallkitError(f"--out {out} is a directory; give the JSON file to write")
    try:  # a file, not os.access: that says yes to root, and to /proc and /sys, which refuse files
        tempfile.NamedTemporaryFile(dir=out.parent, prefix=".recallkit-probe-").close()
    except OSError as error:
        raise RecallkitError(f"cannot write --out {out}: {describe(error)}") from None
    if pretrained is not None:
        _bench_pretrained(pretrained, 8 if batch is None else batch, length, out, quick)
        return
    with console.status("benchmarking") as status:
        result = run_bench(quick=quick, progress=lambda message: status.update(f"benchmarking: {message}"))
    for table in _bench_tables(result):
        console.print(table)
    write_whole(out, lambda partial: partial.write_text(json.dumps(result, indent=1)))
    console.print(f"results: {out}")


def _bench_pretrained(source: str, batch: int, length: int | None, out: Path, quick: bool) -> None:
    from recallkit.hf import load_model
    from recallkit.hf.bench import bench_pretrained

    with console.status("benchmarking") as status:
        model = load_model(source)
        result = bench_pretrained(model, batch=batch, length=length, quick=quick,
                                  progress=lambda message: status.update(f"benchmarking: {message}"))
    evicting = "no attention layer to evict" if result["evicting_decode_cost"] is None else (
        f"under {result['policy']} at budget {result['budget']}: "
        f"{result['evicting_decode_tokens_per_s']:,.1f} tokens/s "
        f"({result['evicting_decode_cost']:.2f}x the plain decode time)")
    console.print(
        f"{source}: prefill {batch} x {result['length']}: {result['prefill_tokens_per_s']:,.0f} tokens/s, "
        f"{result['prefill_gflops']:.1f} GFLOP/s = {result['prefill_pct_peak']:.0f}% of the "
        f"{result['matmul_peak_gflops']:.0f} GFLOP/s matmul peak, "
        f"{result['prefill_vs_plain_forward']:.2f}x a plain "
        f"transformers forward\ndecode: {result['decode_tokens_per_s']:,.1f} tokens/s "
        f"through the cache; {evicting}", highlight=False, emoji=False)
    write_whole(out, lambda partial: partial.write_text(json.dumps(result, indent=1)))
    console.print(f"results: {out}")

