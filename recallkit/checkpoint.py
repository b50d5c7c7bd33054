"""Mid-run checkpoints: a killed run resumes at its last checkpoint and ends bit-identical on CPU.

A checkpoint holds everything the training loop carries between steps: model and optimiser
tensors, the schedule, the data order and cursor, the generators of shuffling and MLM masking,
the learning curve and the wall time spent so far. It is written atomically (a temporary file,
then a rename), so a kill during the write leaves the previous checkpoint intact (and at worst a
``*.partial`` file, which ``recallkit doctor --repair`` removes), and loaded with
``torch.load(weights_only=True)``: no code is unpickled.

The file starts with a header line and the sha256 of the rest: a flipped bit, a truncated file, a
file of another run or another format is a :class:`CorruptCheckpoint` and is never resumed; the
training loop moves it aside (``*.corrupt``) and restarts the run from step 0 with a warning.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recallkit.atomic import write_whole
from recallkit.errors import RecallkitError

CHECKPOINT_DIR = "checkpoints"
"""A sweep's checkpoints: ``DIR/checkpoints/<run_id>.pt``."""
FORMAT = 2
MAGIC = b"recallkit checkpoint v2 sha256="
"""The file: MAGIC, the sha256 (hex) of the torch payload, a newline, the torch payload."""
CORRUPT_SUFFIX = ".corrupt"
KEYS: dict[str, type | tuple[type, ...]] = {
    "format": int, "run_id": str, "model": dict, "optimizer": dict, "schedule": dict, "step": int,
    "cursor": int, "order": torch.Tensor, "shuffle": torch.Tensor, "mlm_masks": torch.Tensor,
    "curve": list, "accuracy": (float, int), "elapsed": (float, int),
}


class CorruptCheckpoint(RecallkitError):
    """A checkpoint that must not be resumed: damaged, truncated, of another run or format."""


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
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    write_whole(path, lambda partial: partial.write_bytes(MAGIC + hashlib.sha256(data).hexdigest().encode()
                                                          + b"\n" + data))


def read_checkpoint(path: Path, run_id: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The verified payload of the checkpoint at ``path`` for run ``run_id``.

    Raises:
        CorruptCheckpoint: unreadable, truncated, not a checkpoint of this format, a checksum
            mismatch, missing or mistyped entries, or another run's.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({error.strerror})") from None
    header, newline, data = raw.partition(b"\n")
    if not header.startswith(MAGIC) or not newline:
        raise CorruptCheckpoint(f"checkpoint {path} is not a recallkit checkpoint of format {FORMAT}")
    if header[len(MAGIC):].decode(errors="replace") != hashlib.sha256(data).hexdigest():
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as error:  # a checksummed file torch cannot read: written by another torch
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable ({type(error).__name__})") from None
    problems = [key for key, kind in KEYS.items()
                if not isinstance(payload, dict) or not isinstance(payload.get(key), kind)]
    if problems:
        raise CorruptCheckpoint(f"checkpoint {path} lacks or mistypes {', '.join(problems)}")
    if payload["format"] != FORMAT:
        raise CorruptCheckpoint(f"checkpoint {path} has format {payload['format']}, expected {FORMAT}")
    if payload["run_id"] != run_id:
        raise CorruptCheckpoint(f"checkpoint {path} belongs to run {payload['run_id']}, not {run_id}")
    return payload


def load_checkpoint(path: Path, run_id: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: torch.optim.lr_scheduler.LRScheduler) -> LoopState | None:
    """Restore model, optimiser and schedule from ``path`` in place; None when there is no checkpoint.

    Raises:
        CorruptCheckpoint: see ``read_checkpoint``, or tensors that do not fit the model. The
            model, optimiser and schedule may then be partly overwritten: build them anew.
    """
    if not path.exists():
        return None
    payload = read_checkpoint(path, run_id, next(model.parameters()).device)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    found = {name: tuple(t.shape) if isinstance(t, torch.Tensor) else None
             for name, t in payload["model"].items()}
    if found != expected:
        raise CorruptCheckpoint(f"checkpoint {path} does not fit the model (other tensors or shapes)")
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
    except Exception as error:
        raise CorruptCheckpoint(f"checkpoint {path} does not fit the run ({type(error).__name__})") from None
    return LoopState(
        step=payload["step"], cursor=payload["cursor"], order=payload["order"].cpu(),
        shuffle=payload["shuffle"].cpu(), mlm_masks=payload["mlm_masks"].cpu(), curve=payload["curve"],
        accuracy=payload["accuracy"], elapsed=payload["elapsed"],
    )


def set_aside(path: Path) -> Path:
    """Rename a checkpoint that must not be resumed to ``<name>.corrupt`` (``.corrupt.1``, ... if taken)."""
    target, n = path.with_name(path.name + CORRUPT_SUFFIX), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{n}")
    os.replace(path, target)
    return target
