"""The process executor: spawned worker processes, each with its own pipe, one run at a time each.

A worker that dies (the OOM killer, a segfault, SIGKILL) is noticed through its process sentinel,
and only the run it held is affected: that run is retried on a fresh worker (resuming from its
checkpoint) up to ``retries`` times, then recorded ``failed`` with the reason; the other workers
and the pending runs go on. Each worker reports over its own pipe (no queue or lock shared between
workers), so a killed worker cannot leave anything half-written that blocks the others.

A worker acknowledges each run it takes; one that dies before that (while it starts, or idle) is
replaced without costing the run an attempt. Workers ignore Ctrl-C: the driver handles it, ends
its workers and leaves their runs to resume.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Any

from recallkit.config import AnyRunConfig as RunConfig
from recallkit.errors import RecallkitError
from recallkit.sweep.worker import execute, init_worker, threads_per_worker

WORKER_RETRIES = 2
"""How often a run whose worker process died is retried before it is recorded ``failed``."""
STARTUP_DEATHS = 3
"""Per worker: how many deaths before any run started the sweep tolerates (then a broken setup)."""

Execute = Callable[..., dict[str, Any]]
"""``execute(config_json, on_step, device, checkpoints, reference) -> outcome``, importable by name (it
is sent to the spawned workers)."""


def _worker_main(conn: Any, threads: int, driver: int, report_seconds: float, run: Execute) -> None:
    """A worker's loop: receive a run, train it, send its progress now and then and its outcome."""
    init_worker(threads, driver)
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the driver is gone
            return
        if job is None:
            return
        config_json, device, checkpoints, reference = job
        conn.send(("started", None))  # from here on, a death is the run's
        last = [0.0]

        def report(s: dict) -> None:
            now = time.monotonic()
            if now - last[0] >= report_seconds or s["step"] == s["max_steps"]:
                last[0] = now
                conn.send(("step", s))

        conn.send(("outcome", run(config_json, report, device, checkpoints, reference)))


def exit_reason(exitcode: int | None) -> str:
    """How a worker process ended, in words (``killed by SIGKILL``, ``exited with code 1``)."""
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start children with Ctrl-C ignored (inherited through exec; Python keeps an ignored SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _Worker:
    """One spawned worker process and the driver's end of its pipe."""

    def __init__(self, context: Any, threads: int, report_seconds: float, run: Execute) -> None:
        self.conn, child = context.Pipe()
        with _sigint_ignored():
            self.process = context.Process(target=_worker_main, daemon=True,
                                           args=(child, threads, os.getpid(), report_seconds, run))
            self.process.start()
        child.close()
        self.config: RunConfig | None = None
        self.started = False  # whether it acknowledged its run (a death before that is not the run's)

    def stop(self) -> None:
        """End the process: an idle one is asked to exit, so that its interpreter cleans up after itself
        (a killed one leaves multiprocessing's semaphores to the resource tracker, which warns); one in a
        run, or one that does not exit within 5 s, is killed (its run resumes later from its checkpoint)."""
        if self.config is None and self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send(None)
                self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def run_processes(
    todo: list[RunConfig], workers: int, start: Callable[[RunConfig], None],
    finish: Callable[[RunConfig, dict], None], on_step: Callable[[RunConfig, dict], None],
    device: str | None, checkpoints: str, report_seconds: float, retries: int = WORKER_RETRIES,
    say: Callable[[str], None] = lambda _: None, run: Execute | None = None,
    reference: Callable[[RunConfig], dict | None] = lambda _: None,
) -> None:
    """Train ``todo`` on ``workers`` processes; ``start(config)`` when a run (or its retry) starts,
    ``on_step`` with its progress, ``finish(config, outcome)`` once per run, in completion order.
    ``reference(config)``, asked as a run starts, is the curve it halts against (halving) or None.
    ``run`` replaces ``recallkit.sweep.worker.execute`` in the workers (fault-injection tests)."""
    run = execute if run is None else run
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    threads = threads_per_worker(workers)
    slots: list[_Worker | None] = [None] * min(workers, len(todo))
    queue, deaths, early_deaths = list(todo), {}, 0
    try:
        while queue or any(w is not None and w.config is not None for w in slots):
            for i, worker in enumerate(slots):  # keep one run per worker in flight
                if not queue or (worker is not None and worker.config is not None):
                    continue
                if worker is not None and not worker.process.is_alive():  # died while idle
                    worker.stop()
                    worker = None
                if worker is None:
                    worker = slots[i] = _Worker(context, threads, report_seconds, run)
                config = queue.pop(0)
                start(config)
                try:
                    worker.conn.send((config.canonical_json(), device, checkpoints, reference(config)))
                except OSError:  # it died just now, before taking the run: not the run's fault
                    worker.stop()
                    slots[i] = None
                    queue.insert(0, config)
                    continue
                worker.config, worker.started = config, False
            busy = [w for w in slots if w is not None and w.config is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5))
            for i, worker in enumerate(slots):
                if worker is None or worker.config is None:
                    continue
                if not ready & {worker.conn, worker.process.sentinel}:
                    continue
                if _receive(worker, finish, on_step):  # what it sent before it ended counts
                    continue
                if worker.process.sentinel in ready or not worker.process.is_alive():
                    config, reason = worker.config, _died(worker)
                    slots[i] = None
                    if not worker.started:  # it died before it took the run (e.g. while it started)
                        queue.insert(0, config)
                        early_deaths += 1
                        if early_deaths > STARTUP_DEATHS * len(slots):
                            raise RecallkitError(f"process workers keep dying before they start a run "
                                                 f"(last: {reason}); try --executor serial")
                        continue
                    early_deaths = 0
                    deaths[config.run_id] = deaths.get(config.run_id, 0) + 1
                    if deaths[config.run_id] <= retries:
                        say(f"the worker of {config.progress_label} died ({reason}); retrying "
                            f"({deaths[config.run_id]} of {retries})")
                        queue.insert(0, config)
                    else:
                        finish(config, {"status": "failed", "error": (
                            f"worker process died on all {retries + 1} attempts (last: {reason}); "
                            "out of memory? the OOM killer sends SIGKILL")})
    finally:
        for worker in slots:
            if worker is not None:
                worker.stop()


def _receive(worker: _Worker, finish: Callable[[RunConfig, dict], None],
             on_step: Callable[[RunConfig, dict], None]) -> bool:
    """Read what the worker sent; True when its run finished (or the worker died: False)."""
    while worker.config is not None and worker.conn.poll():
        try:
            kind, payload = worker.conn.recv()
        except (EOFError, OSError):
            return False
        if kind == "started":
            worker.started = True
        elif kind == "step":
            on_step(worker.config, payload)
        else:
            config, worker.config = worker.config, None
            finish(config, payload)
            return True
    return False


def _died(worker: _Worker) -> str:
    worker.process.join(timeout=5)
    reason = exit_reason(worker.process.exitcode)
    worker.stop()
    return reason
