"""One run in a worker: train it from its canonical JSON and return its outcome for the store.

Used by every executor (serial, process pool, Ray); it imports no executor.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recallkit.config import PretrainedRunConfig, RunConfig, run_config
from recallkit.packed_training import train_packed
from recallkit.sweep.halving import halt_rule
from recallkit.training import RunResult, StepCallback, train


def execute(config_json: str, on_step: StepCallback | None = None, device: str | None = None,
            checkpoints: str | None = None, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one run from its canonical JSON (on ``device`` if given, else the config's); return its
    outcome for ``Store.record``. With ``checkpoints`` (a directory) the run checkpoints to
    ``<checkpoints>/<run_id>.pt`` and resumes from it: a killed sweep loses at most a minute per run.
    With ``reference`` (a sibling's curve, ``recallkit.sweep.halving.reference``) the run stops
    where it falls far behind it."""
    config = run_config(json.loads(config_json))
    if isinstance(config, PretrainedRunConfig):
        from recallkit.hf.run import run_pretrained  # the hf extra, only for pretrained evaluations

        return run_pretrained(config, on_step=on_step)
    checkpoint = None if checkpoints is None else Path(checkpoints) / f"{config.run_id}.pt"
    try:
        halt = None if reference is None else halt_rule(reference, config.train.max_steps)
        result = train(config, on_step=on_step, device=device, checkpoint=checkpoint, halt=halt)
    except Exception as error:  # a failing run is recorded, the sweep goes on
        return _failed(error)
    return _outcome(result)


def execute_packed(configs: list[RunConfig], on_step: Callable[[RunConfig, dict], None] | None,
                   on_outcome: Callable[[RunConfig, dict[str, Any]], None], device: str | None = None,
                   checkpoints: str | None = None) -> None:
    """Train ``configs`` packed (``recallkit.packed_training``); ``on_outcome(config, outcome)`` as
    each stops. An exception fails the runs that had not stopped yet."""
    reported = set()

    def stopped(config: RunConfig, result: RunResult) -> None:
        reported.add(config.run_id)
        if checkpoints is not None:  # an earlier unpacked attempt's checkpoint: the run is over now
            (Path(checkpoints) / f"{config.run_id}.pt").unlink(missing_ok=True)
        try:
            on_outcome(config, _outcome(result))
        except Exception as error:  # recording failed, not training: not the other runs' failure
            raise _RecordingError from error

    try:
        train_packed(configs, on_step=on_step, on_result=stopped, device=device)
    except _RecordingError as error:
        raise error.__cause__ from None
    except Exception as error:
        for config in configs:
            if config.run_id not in reported:
                on_outcome(config, _failed(error))


class _RecordingError(Exception):
    """``on_outcome`` raised inside a packed run: re-raised as it was, after training stops."""


def _outcome(result: RunResult) -> dict[str, Any]:
    return {
        "status": result.status, "metrics": result.metrics, "state_size": result.state_size,
        "num_params": result.num_params, "wall_time": result.wall_time,
    }


def _failed(error: Exception) -> dict[str, Any]:
    tail = traceback.format_exc(limit=-3)
    return {"status": "failed", "error": f"{type(error).__name__}: {error}\n{tail}"}


def init_worker(threads: int, driver: int) -> None:
    """Worker set-up: share the cores, and die with the driver (pid ``driver``), so that a killed
    sweep leaves no orphans."""
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # A driver killed while this worker was still starting (importing torch) died before the
        # signal was armed: the worker would wait on its call queue forever.
        if os.getppid() != driver:
            os._exit(1)


def threads_per_worker(workers: int) -> int:
    """Split the machine's cores between process workers so they do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // workers)
