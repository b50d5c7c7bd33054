"""Run a sweep into a results store with a serial, process-pool or Ray executor.

The driver is the only writer of the store. A worker trains one run and returns its outcome as a
plain dict; an exception becomes a ``failed`` outcome and never stops the sweep.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from recallkit.checkpoint import CHECKPOINT_DIR
from recallkit.config import AnyRunConfig as RunConfig
from recallkit.config import RunConfig as TrainRunConfig
from recallkit.packed_training import pack_key
from recallkit.errors import RecallkitError
import recallkit.sweep.halving as halving_rules
from recallkit.sweep.directory import refuse_links
from recallkit.sweep.lock import writing
from recallkit.sweep.ray_executor import RayOptions, import_ray, run_ray
from recallkit.sweep.store import Store
from recallkit.sweep.process_pool import run_processes
from recallkit.sweep.worker import execute, execute_packed
from recallkit.training import resolve_device

Executor = Literal["serial", "process", "ray"]


SPEED_WINDOW_S = 7 * 24 * 3600.0
"""The bars' ETA comes from the speed over this window: rich's default 30 s saw no finished run at
all once runs took longer, and showed no ETA for a whole sweep."""


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=False,
        speed_estimate_period=SPEED_WINDOW_S,
    )


def run_sweep(
    configs: list[RunConfig], out_dir: str | Path, executor: Executor = "serial", workers: int = 1,
    quiet: bool = False, on_outcome: Callable[[RunConfig, dict], None] | None = None,
    device: str | None = None,
    ray_options: RayOptions | None = None, on_step: Callable[[RunConfig, dict], None] | None = None,
    halving: bool = False, pack: bool = False,
) -> list[dict[str, Any]]:
    """Run every unfinished config and record it in ``out_dir/results.sqlite``.

    ``device`` (auto | cpu | cuda) overrides every run's ``train.device`` without changing its
    identity, so a sweep started on one machine resumes on another.

    Serial and process runs checkpoint to ``out_dir/checkpoints`` about once a minute, so a killed
    sweep resumes its unfinished runs mid-run (Ray workers may not share the disk: they restart).

    ``workers`` is the process pool's size; with Ray, the most runs in flight (fewer when the
    cluster fits fewer). ``ray_options`` (only with ``executor="ray"``; default ``RayOptions()``)
    says where Ray runs and what each run reserves.

    ``halving`` (serial and process executors): runs that differ only in learning rate train one
    group member after another, and a run far behind its group's best finished run stops early
    (:mod:`recallkit.sweep.halving`; the store says why in ``metrics["halted"]``).

    ``pack`` (serial executor): runs that share a model, task and batch size and differ in their
    optimisation or seed train together as one packed model (:mod:`recallkit.packed_training`),
    each recorded as it stops. Packed runs do not checkpoint mid-run. On a 2-core CPU packing is
    slower than running them one by one (docs/results.md); it is for GPUs.

    ``on_outcome(config, outcome)`` is called in the driver after each run is recorded (e.g. W&B
    logging); ``on_step(config, step)`` with the training progress of the runs in flight
    (``{"step", "max_steps", "loss", "accuracy"}``; from process workers at most every
    ``STEP_REPORT_SECONDS`` per run), which also drives the per-run progress bars.

    Returns:
        All rows of the store after the sweep (see ``Store.rows``).
    """
    configs = list({config.run_id: config for config in configs}.values())  # a repeated config runs once
    ray_options = check_run_options(configs, executor, workers, device, ray_options, halving, pack)
    checkpoints = str(Path(out_dir) / CHECKPOINT_DIR)  # serial and process runs resume mid-run
    with writing(Path(out_dir)) as store:
        refuse_links(Path(out_dir) / CHECKPOINT_DIR, Path(out_dir) / "wandb")  # written into below
        store.reset_running()  # we hold the lock: any `running` row is a killed driver's
        store.add(configs)
        todo = store.unfinished(configs)
        def reference(config: RunConfig) -> dict | None:  # the curve a starting run halts against
            return halving_rules.reference(config, store.rows()) if halving else None

        if halving:
            todo = halving_rules.order(todo)
        try:
            _execute(todo, configs, store, executor, workers, device, ray_options, quiet, on_step, on_outcome,
                     checkpoints, reference, pack)
        except KeyboardInterrupt:  # the runs in flight are pending again (doctor would call them stale)
            store.reset_running()
            raise
        return store.rows()


def check_run_options(configs: list[RunConfig], executor: Executor = "serial", workers: int = 1,
                      device: str | None = None, ray_options: RayOptions | None = None, halving: bool = False,
                      pack: bool = False) -> RayOptions | None:
    """Refuse, before anything is written, the options :func:`run_sweep` cannot run (a clear
    ValueError or RecallkitError); returns the Ray options to use (the defaults with the ray executor).
    ``run --prune`` calls it first, so that a refused run deletes nothing."""
    if executor not in ("serial", "process", "ray"):
        raise ValueError(f"unknown executor {executor!r}; use serial, process or ray")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ray_options is not None and executor != "ray":
        raise ValueError(f"Ray options need the ray executor, not {executor}")
    if halving and executor == "ray":
        raise ValueError("halving needs the serial or process executor, not ray")
    if pack and (executor != "serial" or halving):
        raise ValueError("packing needs the serial executor and no halving (packed runs train side by side)")
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    if executor == "ray":
        ray_options = ray_options or RayOptions()
        ray_options.check_device(device)  # the device is the workers', not this machine's
        import_ray()  # fail before any run starts
    elif device is not None:
        resolve_device(device)  # fail before any run starts
    else:
        for config in configs:  # each run's own device (ray: the workers', not this machine's)
            wanted = getattr(getattr(config, "train", None), "device", None)
            if wanted == "cuda":
                try:
                    resolve_device(wanted)
                except ValueError:
                    raise RecallkitError(f"run {config.progress_label} ({config.run_id}) has train.device="
                                         "'cuda' but CUDA is not available here; pass --device cpu "
                                         "or auto") from None
    return ray_options


def _execute(todo: list[RunConfig], configs: list[RunConfig], store: Store, executor: str, workers: int,
             device: str | None, ray_options: RayOptions | None, quiet: bool,
             on_step: Callable[[RunConfig, dict], None] | None,
             on_outcome: Callable[[RunConfig, dict], None] | None, checkpoints: str,
             reference: Callable[[RunConfig], dict | None], pack: bool) -> None:
    """Run ``todo`` (the unfinished of ``configs``) with the executor, recording each outcome."""
    with _progress(quiet) as progress:
        sweep_task = progress.add_task("sweep", total=len(configs), info="")
        progress.update(sweep_task, completed=len(configs) - len(todo))

        def finish(config: RunConfig, outcome: dict) -> None:
            store.record(config.run_id, outcome)
            for note in (outcome.get("metrics") or {}).get("warnings", []):
                print(f"warning: {config.progress_label}: {note}", file=sys.stderr)
            accuracy = (outcome.get("metrics") or {}).get("accuracy")
            info = f"last: {config.progress_label} {outcome['status']}"
            progress.update(sweep_task, advance=1,
                            info=info + (f" acc={accuracy:.3f}" if accuracy is not None else ""))
            if on_outcome is not None:
                on_outcome(config, outcome)

        if executor == "ray":  # even one run: it goes where its reserved resources are
            if todo:
                say = progress.console.print if not quiet else lambda _: None
                run_ray(todo, store, workers, finish, device, ray_options, say)
        elif executor == "serial" or len(todo) <= 1:
            for group in _packs(todo) if pack else [[config] for config in todo]:
                if len(group) > 1:
                    _run_packed(group, store, progress, finish, device, on_step, checkpoints)
                else:
                    _run_serial(group, store, progress, finish, device, on_step, checkpoints, reference)
        else:
            _run_processes(todo, store, workers, finish, device, progress, on_step, checkpoints, quiet,
                           reference)


def _run_task(progress: Progress, config: RunConfig) -> TaskID:
    """A progress bar for one run in flight."""
    return progress.add_task(f"  {config.progress_label}", total=config.progress_total, info="")


def step_info(s: dict) -> str:
    """A run's progress line: loss, and accuracy once the run has been evaluated."""
    accuracy = s.get("accuracy")
    evaluated = accuracy is not None and not math.isnan(accuracy)
    return f"loss {s['loss']:.3f}" + (f" acc {accuracy:.3f}" if evaluated else "")


def _show_step(progress: Progress, task: TaskID, s: dict) -> None:
    progress.update(task, completed=s["step"], info=step_info(s))


def _run_serial(todo: list[RunConfig], store: Store, progress: Progress, finish, device: str | None,
                on_step: Callable[[RunConfig, dict], None] | None, checkpoints: str,
                reference: Callable[[RunConfig], dict | None]) -> None:
    for config in todo:
        store.mark_running(config.run_id)
        run_task = _run_task(progress, config)

        def step(s: dict, run_task=run_task, config=config) -> None:
            _show_step(progress, run_task, s)
            if on_step is not None:
                on_step(config, s)

        outcome = execute(config.canonical_json(), step, device, checkpoints, reference(config))
        progress.remove_task(run_task)
        finish(config, outcome)


def _packs(todo: list[RunConfig]) -> list[list[RunConfig]]:
    """The runs in sweep order, grouped by ``pack_key`` (each group where its first run was)."""
    groups: dict[Any, list[RunConfig]] = {}
    seen = set()
    for index, config in enumerate(todo):
        if config.run_id in seen:  # a config given twice is one run
            continue
        seen.add(config.run_id)
        key = pack_key(config) if isinstance(config, TrainRunConfig) else None
        groups.setdefault(index if key is None else key, []).append(config)
    return list(groups.values())


def _run_packed(group: list[RunConfig], store: Store, progress: Progress, finish, device: str | None,
                on_step: Callable[[RunConfig, dict], None] | None, checkpoints: str) -> None:
    tasks = {}
    for config in group:
        store.mark_running(config.run_id)
        tasks[config.run_id] = _run_task(progress, config)

    def step(config: RunConfig, s: dict) -> None:
        _show_step(progress, tasks[config.run_id], s)
        if on_step is not None:
            on_step(config, s)

    def stopped(config: RunConfig, outcome: dict) -> None:
        progress.remove_task(tasks.pop(config.run_id))
        finish(config, outcome)

    execute_packed(group, step, stopped, device, checkpoints)


STEP_REPORT_SECONDS = 1.0
"""How often a process worker sends its run's training progress to the driver."""


def _run_processes(todo: list[RunConfig], store: Store, workers: int, finish, device: str | None,
                   progress: Progress, on_step: Callable[[RunConfig, dict], None] | None,
                   checkpoints: str, quiet: bool, reference: Callable[[RunConfig], dict | None]) -> None:
    tasks: dict[str, TaskID] = {}

    def start(config: RunConfig) -> None:
        store.mark_running(config.run_id)
        if config.run_id not in tasks:  # a retried run keeps its bar
            tasks[config.run_id] = _run_task(progress, config)

    def step(config: RunConfig, s: dict) -> None:
        _show_step(progress, tasks[config.run_id], s)
        if on_step is not None:
            on_step(config, s)

    def done(config: RunConfig, outcome: dict) -> None:
        progress.remove_task(tasks.pop(config.run_id))
        finish(config, outcome)

    say = progress.console.print if not quiet else lambda _: None
    run_processes(todo, workers, start, done, step, device, checkpoints, STEP_REPORT_SECONDS, say=say,
                  reference=reference)
