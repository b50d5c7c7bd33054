"""Mid-run checkpoints: a killed run resumes at its last checkpoint and ends bit-identical on CPU.

A checkpoint holds everything the training loop carries between steps: model and optimiser
tensors, the schedule, the data order and cursor, the generators of shuffling and MLM masking,
the learning curve and the wall time spent so far. It is written atomically (a temporary file,
then a rename), so a kill during the write leaves the previous checkpoint intact, and loaded with
``torch.load(weights_only=True)``: no code is unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recallkit.errors import RecallkitError

FORMAT = 1


@dataclass
class LoopState:
    """What the training loop needs to continue after ``step``, besides model, optimiser and schedule
    (CPU tensors)."""

    step: int
    cursor: int
    order: torch.Tensor  # (num_train_examples,) the current epoch's permutation
    shuffle: torch.Tensor  # torch.Generator.get_state() of the shuffling generator
    mlm_masks: torch.Tensor  # torch.Generator.get_state() of the MLM masking generator
    curve: list[dict]
    accuracy: float
    elapsed: float  # seconds of training before this checkpoint


def save_checkpoint(path: Path, run_id: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler, loop: LoopState) -> None:
    """Write the checkpoint of run ``run_id`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT, "run_id": run_id, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "step": loop.step, "cursor": loop.cursor, "order": loop.order,
        "shuffle": loop.shuffle, "mlm_masks": loop.mlm_masks, "curve": loop.curve, "accuracy": loop.accuracy,
        "elapsed": loop.elapsed,
    }
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, run_id: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler) -> LoopState | None:
    """Restore model, optimiser and schedule from ``path`` in place; None when there is no checkpoint.

    Raises:
        RecallkitError: the file is unreadable or belongs to another run (one line; deleting the
            file restarts the run from step 0).
    """
    if not path.exists():
        return None
    device = next(model.parameters()).device
    try:
        payload: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT}")
    except Exception as error:
        raise RecallkitError(f"checkpoint {path} is unreadable ({type(error).__name__}: {error}); "
                             "delete it to restart the run") from error
    if payload["run_id"] != run_id:
        raise RecallkitError(f"checkpoint {path} belongs to run {payload['run_id']}, not {run_id}; "
                             "delete it to restart the run")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    return LoopState(
        step=payload["step"], cursor=payload["cursor"], order=payload["order"].cpu(),
        shuffle=payload["shuffle"].cpu(), mlm_masks=payload["mlm_masks"].cpu(), curve=payload["curve"],
        accuracy=payload["accuracy"], elapsed=payload["elapsed"],
    )

