"""Run a sweep into a results store with a serial, process-pool or Ray executor.

The driver is the only writer of the store. A worker trains one run and returns its outcome as a
plain dict; an exception becomes a ``failed`` outcome and never stops the sweep.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from queue import Empty
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

from recallkit.config import AnyRunConfig as RunConfig
from recallkit.sweep.lock import writer_lock
from recallkit.sweep.ray_executor import RayOptions, import_ray, run_ray
from recallkit.sweep.store import RESULTS_FILE, Store
from recallkit.sweep.worker import execute, init_worker, threads_per_worker
from recallkit.training import resolve_device

Executor = Literal["serial", "process", "ray"]
CHECKPOINT_DIR = "checkpoints"


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet, transient=False,
    )


def run_sweep(
    configs: list[RunConfig], out_dir: str | Path, executor: Executor = "serial", workers: int = 1,
    quiet: bool = False, on_outcome: Callable[[RunConfig, dict], None] | None = None,
    device: str | None = None,
    ray_options: RayOptions | None = None, on_step: Callable[[RunConfig, dict], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished config and record it in ``out_dir/results.sqlite``.

    ``device`` (auto | cpu | cuda) overrides every run's ``train.device`` without changing its
    identity, so a sweep started on one machine resumes on another.

    Serial and process runs checkpoint to ``out_dir/checkpoints`` about once a minute, so a killed
    sweep resumes its unfinished runs mid-run (Ray workers may not share the disk: they restart).

    ``workers`` is the process pool's size; with Ray, the most runs in flight (fewer when the
    cluster fits fewer). ``ray_options`` (only with ``executor="ray"``; default ``RayOptions()``)
    says where Ray runs and what each run reserves.

    ``on_outcome(config, outcome)`` is called in the driver after each run is recorded (e.g. W&B
    logging); ``on_step(config, step)`` with the training progress of the runs in flight
    (``{"step", "max_steps", "loss", "accuracy"}``; from process workers at most every
    ``STEP_REPORT_SECONDS`` per run), which also drives the per-run progress bars.

    Returns:
        All rows of the store after the sweep (see ``Store.rows``).
    """
    if executor not in ("serial", "process", "ray"):
        raise ValueError(f"unknown executor {executor!r}; use serial, process or ray")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if ray_options is not None and executor != "ray":
        raise ValueError(f"Ray options need the ray executor, not {executor}")
    if device is not None and device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    if executor == "ray":
        ray_options = ray_options or RayOptions()
        ray_options.check_device(device)  # the device is the workers', not this machine's
        import_ray()  # fail before any run starts
    elif device is not None:
        resolve_device(device)  # fail before any run starts
    checkpoints = str(Path(out_dir) / CHECKPOINT_DIR)  # serial and process runs resume mid-run
    with writer_lock(Path(out_dir)), Store(Path(out_dir) / RESULTS_FILE) as store:
        store.reset_running()  # we hold the lock: any `running` row is a killed driver's
        store.add(configs)
        todo = store.unfinished(configs)
        with _progress(quiet) as progress:
            sweep_task = progress.add_task("sweep", total=len(configs), info="")
            progress.update(sweep_task, completed=len(configs) - len(todo))

            def finish(config: RunConfig, outcome: dict) -> None:
                store.record(config.run_id, outcome)
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
                _run_serial(todo, store, progress, finish, device, on_step, checkpoints)
            else:
                _run_processes(todo, store, workers, finish, device, progress, on_step, checkpoints)
        return store.rows()


def _run_task(progress: Progress, config: RunConfig) -> TaskID:
    """A progress bar for one run in flight."""
    return progress.add_task(f"  {config.progress_label}", total=config.progress_total, info="")


def _show_step(progress: Progress, task: TaskID, s: dict) -> None:
    progress.update(task, completed=s["step"], info=f"loss {s['loss']:.3f} acc {s['accuracy']:.3f}")


def _run_serial(todo: list[RunConfig], store: Store, progress: Progress, finish, device: str | None,
                on_step: Callable[[RunConfig, dict], None] | None, checkpoints: str) -> None:
    for config in todo:
        store.mark_running(config.run_id)
        run_task = _run_task(progress, config)

        def step(s: dict, run_task=run_task, config=config) -> None:
            _show_step(progress, run_task, s)
            if on_step is not None:
                on_step(config, s)

        outcome = execute(config.canonical_json(), step, device, checkpoints)
        progress.remove_task(run_task)
        finish(config, outcome)


STEP_REPORT_SECONDS = 1.0
"""How often a process worker sends its run's training progress to the driver."""

_steps_queue: Any = None
"""In a process worker: the queue its progress goes to (None: not reported)."""


def _init_process_worker(threads: int, driver: int, steps: Any) -> None:
    global _steps_queue
    _steps_queue = steps
    init_worker(threads, driver)


def _execute_reporting(config_json: str, run_id: str, device: str | None, checkpoints: str) -> dict[str, Any]:
    """``execute`` in a process worker, sending ``(run_id, step)`` to the driver now and then."""
    last = [0.0]

    def report(s: dict) -> None:
        now = time.monotonic()
        if _steps_queue is not None and (now - last[0] >= STEP_REPORT_SECONDS or s["step"] == s["max_steps"]):
            last[0] = now
            _steps_queue.put((run_id, s))

    return execute(config_json, report, device, checkpoints)


def _run_processes(todo: list[RunConfig], store: Store, workers: int, finish, device: str | None,
                   progress: Progress, on_step: Callable[[RunConfig, dict], None] | None,
                   checkpoints: str) -> None:
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    steps = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_process_worker,
                             initargs=(threads_per_worker(workers), os.getpid(), steps)) as pool:
        queue, running, tasks = list(todo), {}, {}

        def submit() -> None:  # keep one run per worker in flight, so `running` means running
            while queue and len(running) < workers:
                config = queue.pop(0)
                store.mark_running(config.run_id)
                future = pool.submit(_execute_reporting, config.canonical_json(), config.run_id, device,
                                     checkpoints)
                running[future] = config
                tasks[config.run_id] = (config, _run_task(progress, config))

        def drain() -> None:  # progress of the runs in flight (late reports of finished runs are dropped)
            while True:
                try:
                    run_id, s = steps.get_nowait()
                except Empty:
                    return
                if run_id in tasks:
                    config, task = tasks[run_id]
                    _show_step(progress, task, s)
                    if on_step is not None:
                        on_step(config, s)

        submit()
        while running:
            done, _ = wait(running, timeout=STEP_REPORT_SECONDS / 2, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                config = running.pop(future)
                progress.remove_task(tasks.pop(config.run_id)[1])
                finish(config, future.result())
            submit()
