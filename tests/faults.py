"""Faults injected into process workers (they import this module by name): workers that die."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from recallkit.sweep.worker import execute

MARKERS = "RECALLKIT_TEST_FAULT_DIR"
"""Environment variable: the directory where ``die_once`` leaves a file per run it killed."""


def die_if_lr_half_or_once(config_json: str, on_step, device, checkpoints, reference=None):
    """SIGKILL the worker for every run with lr 0.5, and once for a run with seed 1; else train."""
    config = json.loads(config_json)
    if config["train"]["lr"] == 0.5:
        os.kill(os.getpid(), signal.SIGKILL)
    if config["train"]["seed"] == 1:
        marker = Path(os.environ[MARKERS]) / "killed-once"
        if not marker.exists():
            marker.write_text("")
            os.kill(os.getpid(), signal.SIGKILL)
    return execute(config_json, on_step, device, checkpoints, reference)
