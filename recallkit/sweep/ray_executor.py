"""Run a sweep's runs as Ray tasks, on a local Ray started for the sweep or on an existing cluster.

The driver stays the only writer of the store: a task trains one run and returns its outcome dict,
exactly as a process worker does. Ray retries a task whose worker process or node died (a bounded
number of times); an exception inside training is already a ``failed`` outcome and is not retried.

Ray is an optional dependency (``pip install recallkit[ray]``), imported only when this executor runs.

A driver killed with SIGKILL: a local Ray it started shares its fate (Ray starts its GCS and raylet
with the kernel's parent-death signal), the workers training its runs exit within seconds once the
raylet is gone (about 2 s measured), and Ray's two agent processes after about 62 s: they first try
to report the raylet's death to the dead GCS, with a fixed 60 s timeout. An idle worker that was
still starting can take as long (seen once in CI). None of these holds a run. On an existing
cluster, Ray ends the tasks of a job whose driver disconnected. Either way the next driver resets
the killed driver's ``running`` rows and reruns them.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from recallkit.config import RunConfig
from recallkit.errors import RecallkitError
from recallkit.sweep.store import Store

INSTALL_HINT = "the ray executor needs `pip install recallkit[ray]`"


@dataclass(frozen=True)
class RayOptions:
    """How the runs of a sweep map onto Ray tasks.

    Attributes:
        address: cluster to connect to (``host:port``, ``ray://host:port``, or ``auto`` for the one
            ``ray start`` started on this machine). ``None``: ``RAY_ADDRESS`` if set (Ray's
            convention, e.g. under ``ray job submit``), else a local Ray started for this sweep.
        num_cpus: CPUs reserved per run; also the run's torch threads.
        num_gpus: GPUs reserved per run (fractions share a GPU); with 0 the run sees no GPU.
        max_retries: how often Ray reruns a run whose worker process or node died.
    """

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if not self.num_cpus > 0:
            raise ValueError(f"num_cpus per run must be > 0, got {self.num_cpus}")
        if not self.num_gpus >= 0:
            raise ValueError(f"num_gpus per run must be >= 0, got {self.num_gpus}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")

    def check_device(self, device: str | None) -> None:
        """Refuse a ``cuda`` device override for runs that reserve no GPU (they would see none)."""
        if device == "cuda" and self.num_gpus == 0:
            raise ValueError("device cuda with the ray executor needs num_gpus > 0 per run")


def import_ray() -> ModuleType:
    """Import Ray, or fail with one line that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RecallkitError(INSTALL_HINT) from None
    return ray


def run_in_worker(config_json: str, device: str | None, num_cpus: float, hide_gpus: bool) -> dict[str, Any]:
    """The Ray task: train one run in a Ray worker process and return its outcome."""
    if hide_gpus:
        # Recent Ray (ray-project/ray#54868; 2.60 here) no longer hides GPUs from tasks that
        # reserve none; hide them ourselves so that `auto` means CPU and a run never uses a GPU
        # another run reserved. CUDA reads this at its first call, and a sweep's tasks all agree.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from recallkit.sweep.worker import execute  # in the worker: torch is imported after the env is set

    torch.set_num_threads(max(1, int(num_cpus)))  # the CPUs this task reserved, not the whole node
    return execute(config_json, None, device)


def run_ray(
    todo: list[RunConfig], store: Store, workers: int, finish: Callable[[RunConfig, dict], None],
    device: str | None, options: RayOptions, say: Callable[[str], None] = lambda _: None,
) -> None:
    """Train ``todo`` as Ray tasks, keeping at most ``workers`` in flight (fewer if the cluster fits
    fewer), and hand each outcome to ``finish`` in completion order.

    A run is marked ``running`` only when its task is submitted, and no more tasks are submitted
    than the cluster can run at once, so ``running`` rows are running, not queued inside Ray.
    """
    ray = import_ray()
    with _session(ray, options) as (started, where):
        task = ray.remote(run_in_worker).options(
            num_cpus=options.num_cpus, num_gpus=options.num_gpus,
            max_retries=options.max_retries, retry_exceptions=False,
        )
        fits = _runs_that_fit(ray, options)
        if fits == 0 and started:
            raise RecallkitError(f"the local Ray has {_resources(ray)}: no run fits in "
                                 f"num_cpus={options.num_cpus:g}, num_gpus={options.num_gpus:g}")
        say(f"{where} with {_resources(ray)}: {max(1, min(workers, fits))} runs at a time "
            f"(num_cpus={options.num_cpus:g}, num_gpus={options.num_gpus:g} each)")
        queue, running = list(todo), {}
        try:
            while queue or running:
                # Re-read every round: nodes join and leave a cluster. With none that fits, keep one
                # task queued so an autoscaler sees demand.
                limit = max(1, min(workers, _runs_that_fit(ray, options)))
                while queue and len(running) < limit:
                    config = queue.pop(0)
                    store.mark_running(config.run_id)
                    ref = task.remote(config.canonical_json(), device, options.num_cpus,
                                      options.num_gpus == 0)
                    running[ref] = config
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    finish(running.pop(ref), _outcome(ray, ref, options))
        finally:
            for ref in running:  # interrupted (Ctrl-C): leave no run training on a cluster
                ray.cancel(ref, force=True)


def _outcome(ray: ModuleType, ref: Any, options: RayOptions) -> dict[str, Any]:
    """The task's outcome, or a ``failed`` one that says how Ray failed."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        # An exception escaped `execute` (e.g. recallkit missing on a node); never retried.
        return {"status": "failed", "error": f"Ray task error: {error.cause!r}\n{error}"}
    except ray.exceptions.RayError as error:  # the worker process or its node died on every attempt
        attempts = options.max_retries + 1
        return {"status": "failed",
                "error": f"Ray worker failure after {attempts} attempts: {type(error).__name__}: {error}"}


@contextmanager
def _session(ray: ModuleType, options: RayOptions) -> Iterator[tuple[bool, str]]:
    """Connect to Ray for the sweep.

    A connection the caller already made (e.g. in a notebook) is used and left open. Otherwise
    the sweep connects, or starts a local Ray, and disconnects (stopping a local Ray) at the end.

    Yields:
        Whether this process started that Ray (a local one, whose nodes are all there is: no
        autoscaler will add one), and which Ray it is, in words.
    """
    if ray.is_initialized():
        yield False, "the connected Ray"
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    started = address == "local"  # "local" always starts a new Ray, whatever RAY_ADDRESS says
    if not started:
        _check_reachable(address)
    # Runs report through their outcomes: no worker logs, and no Ray chatter below errors.
    # Ray detects a local node's CPUs and GPUs itself (it honours container limits).
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "logging_level": logging.ERROR}
    if started:
        kwargs["include_dashboard"] = False
    main = threading.current_thread() is threading.main_thread()
    on_sigterm = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kwargs)
    except ConnectionError as error:  # e.g. refused, or the cluster wants an auth token we lack
        raise RecallkitError(f"cannot connect to Ray at {address}: {error}") from None
    terminated: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        """SIGTERM: stop as a sweep without Ray does (exit 128 + 15), where Ray's own handler printed a
        crash report and exited 1. Raised as Ctrl-C, the one exception Ray's blocking calls pass on
        (a SystemExit raised in them comes out as exit 1), and turned into the exit below."""
        terminated.append(signum)
        raise KeyboardInterrupt

    if main:
        signal.signal(signal.SIGTERM, stop)
    try:
        yield started, "a local Ray" if started else f"the Ray cluster at {address}"
    except KeyboardInterrupt:
        if terminated:  # the runs in flight are cancelled (run_ray) and pending again next time
            raise SystemExit(128 + terminated[0]) from None
        raise
    finally:
        ray.shutdown()
        if main:
            signal.signal(signal.SIGTERM, on_sigterm)


def _check_reachable(address: str) -> None:
    """Fail in seconds with one line on an address nothing listens at (Ray would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # `auto` and other forms Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as error:
        raise RecallkitError(f"cannot reach a Ray cluster at {address}: {error}") from None


def _runs_that_fit(ray: ModuleType, options: RayOptions) -> int:
    """How many runs the alive nodes can hold at once, node by node (a run never spans nodes)."""
    total = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        fits = math.floor(resources.get("CPU", 0) / options.num_cpus + 1e-9)
        if options.num_gpus > 0:
            fits = min(fits, math.floor(resources.get("GPU", 0) / options.num_gpus + 1e-9))
        total += fits
    return total


def _resources(ray: ModuleType) -> str:
    resources = ray.cluster_resources()
    return f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs"
