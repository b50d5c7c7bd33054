"""Training loop (docs/design.md section 6): AdamW, warmup + cosine, clipping, early stopping."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from recallkit.checkpoint import (
    CorruptCheckpoint,
    LoopState,
    load_checkpoint,
    save_checkpoint,
    set_aside,
)
from recallkit.config import RunConfig
from recallkit.evaluate import evaluate
from recallkit.mlm import labels_after_prefix, mask_prefix, mlm_loss
from recallkit.model import LanguageModel, build_model
from recallkit.tasks.base import IGNORE_INDEX, Batch, eval_seed, train_seed
from recallkit.tasks.shared_data import generate_once

CHECKPOINT_SECONDS = 60.0
"""Default wall time between checkpoints of a run that has a checkpoint file."""
FINITE_CHECK_ROWS = 64  # test sequences a finished run must map to finite logits (one forward pass)

StepCallback = Callable[[dict], None]
"""Called after every optimiser step with ``{"step", "max_steps", "loss", "accuracy"}``."""


@dataclass
class RunResult:
    """Outcome of one run. ``status`` is ``done`` or ``diverged`` (non-finite loss)."""

    status: str
    metrics: dict
    state_size: int
    num_params: int
    wall_time: float
    model: LanguageModel
    curve: list[dict] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but CUDA is not available")
    return torch.device(device)


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """The learning-rate factor of update ``step`` (0-based): linear warmup, (step + 1) / warmup_steps,
    then a cosine from 1 at update ``warmup_steps`` to ``min_ratio`` at update ``max_steps``, one past
    the last: so the peak is used twice (the last warmup update and the first cosine one) and the
    last update's factor is a little above ``min_ratio`` (a convention; the packed trainer keeps it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def decays(p: torch.nn.Parameter) -> bool:
    """Whether AdamW decays this parameter: matrices only, not biases, norm gains, or parameters a
    mixer marks ``_no_weight_decay`` (SSM decay rates and skips, whose zero is not a neutral value)."""
    return p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)


def _optimizer(model: LanguageModel, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the parameters that ``decays``."""
    decay = [p for p in model.parameters() if decays(p)]
    no_decay = [p for p in model.parameters() if not decays(p)]
    train = config.train
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=train.lr, betas=train.betas,
    )


HaltRule = Callable[[int, float], "str | None"]
"""``halt(step, accuracy)`` at each evaluation: why the run stops there (e.g. halving), or None."""


def train(config: RunConfig, on_step: StepCallback | None = None, device: str | None = None,
          checkpoint: Path | None = None, checkpoint_seconds: float | None = None,
          halt: HaltRule | None = None) -> RunResult:
    """Train the run's model on its task and evaluate it on every eval task.

    ``metrics`` holds the headline evaluation (the first eval task) at the top level and one entry
    per eval task, with the state size at its length, in ``metrics["evals"]``.

    Deterministic on CPU for a given config: model init, data and shuffling all derive from
    ``config.train.seed`` through local generators.

    With ``checkpoint`` (a file path), the loop state is saved there at most every
    ``checkpoint_seconds`` (default ``CHECKPOINT_SECONDS``) and a run that finds the file resumes
    from it (``recallkit.checkpoint``): on CPU the resumed run ends exactly as an uninterrupted one.
    The file is removed when the run ends. A checkpoint that must not be resumed (corrupt,
    truncated, another run's) is renamed ``*.corrupt`` and the run starts over from step 0; the
    note is kept in ``metrics["warnings"]``.

    ``halt`` is asked at every evaluation; a reason it returns ends the run there (status ``done``),
    kept in ``metrics["halted"]`` (``recallkit.sweep.halving``).
    """
    start_time = time.perf_counter()
    tc = config.train
    device = resolve_device(device or tc.device)  # an override is an execution detail, not the run's identity
    model = initial_model(config, device)
    test_sets = [generate_once(task, tc.num_test_examples, eval_seed(tc.seed)) for task in config.test_tasks]
    notes = []
    try:
        fit = _fit(config, model, test_sets[0], start_time, on_step, checkpoint, checkpoint_seconds, halt)
    except CorruptCheckpoint as error:  # never resumed: set aside, and the run starts over
        moved = set_aside(checkpoint)
        notes.append(f"{error}: moved to {moved.name}; the run restarted from step 0")
        model = initial_model(config, device)  # the failed load may have overwritten some weights
        fit = _fit(config, model, test_sets[0], start_time, on_step, checkpoint, checkpoint_seconds, halt)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # the run is over: nothing left to resume
    return run_result(config, model, test_sets, fit, notes)


def run_result(config: RunConfig, model: LanguageModel, test_sets: list[Batch], fit: Fit,
               notes: list[str] = ()) -> RunResult:
    """A trained run's result: its final evaluations, curve, and the notes of how it went. A run
    whose last step left weights with non-finite outputs is ``diverged``: the loop checks each loss
    before its step, so nothing else sees what the last step did."""
    status, notes = fit.status, list(notes)
    if status == "done" and not outputs_finite(model, test_sets[0]):
        status = "diverged"
        notes.append(f"step {fit.step} left weights whose outputs are not finite")
    metrics, evals = final_evaluations(config, model, test_sets, fit.metrics)
    metrics = {**metrics, "device": next(model.parameters()).device.type, "steps": fit.step,
               "curve": fit.curve, "evals": evals,
               "best_accuracy": max([c.get("accuracy", 0.0) for c in fit.curve] + [metrics["accuracy"]])}
    if notes:
        metrics["warnings"] = list(notes)
    if fit.halted:
        metrics["halted"] = fit.halted
    if config.task.has_length_axis:
        metrics["train_length_range"] = list(config.task.length_range())
    return RunResult(
        status=status, metrics=metrics, state_size=model.state_size(config.test_tasks[0].seq_len),
        num_params=model.num_params(), wall_time=time.perf_counter() - fit.start_time, model=model,
        curve=fit.curve,
    )


def outputs_finite(model: LanguageModel, batch: Batch, rows: int = FINITE_CHECK_ROWS) -> bool:
    """Whether ``model``'s logits on the first ``rows`` sequences of ``batch`` are all finite."""
    part = batch[:rows].to(next(model.parameters()).device)
    with torch.no_grad():
        return bool(torch.isfinite(model(part.inputs, part.prefix_len)).all())


def initial_model(config: RunConfig, device: torch.device) -> LanguageModel:
    """The run's model at step 0 (its init drawn from ``config.train.seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return build_model(config.model).to(device)


@dataclass
class Fit:
    """What the training loop leaves for the final evaluations and the run's result."""

    status: str  # done or diverged
    step: int  # the last step taken
    curve: list[dict]
    metrics: dict | None  # the headline evaluation of the last step, when that step was evaluated
    start_time: float  # the run's start on ``time.perf_counter``, earlier by a resumed run's past time
    halted: str | None = None  # why ``halt`` stopped the run


def _fit(config: RunConfig, model: LanguageModel, test_set: Batch, start_time: float,
         on_step: StepCallback | None, checkpoint: Path | None, checkpoint_seconds: float | None,
         halt: HaltRule | None = None) -> Fit:
    """The training loop: up to ``max_steps`` optimiser steps, the headline test set scored every
    ``eval_every`` steps, stopped early at ``early_stop_accuracy`` or on a non-finite loss.

    Everything a step depends on (data order and cursor, shuffling and MLM generators, optimiser and
    schedule) is saved to ``checkpoint`` at most every ``checkpoint_seconds`` and restored from it,
    which is what makes a resumed run end bit-identical to an uninterrupted one on CPU.
    """
    tc = config.train
    device = next(model.parameters()).device
    train_data = generate_once(config.task, tc.num_train_examples, train_seed(tc.seed))
    optimizer = _optimizer(model, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio)
    )
    shuffle = torch.Generator().manual_seed(tc.seed)
    mlm_masks = torch.Generator().manual_seed(tc.seed + 1)
    order = torch.randperm(len(train_data), generator=shuffle)
    cursor, status, curve, metrics, accuracy, halted = 0, "done", [], None, float("nan"), None
    resumed = None
    if checkpoint is not None:
        resumed = load_checkpoint(checkpoint, config.run_id, model, optimizer, schedule)
    if resumed is not None:
        cursor, order, curve, accuracy = resumed.cursor, resumed.order, resumed.curve, resumed.accuracy
        shuffle.set_state(resumed.shuffle)
        mlm_masks.set_state(resumed.mlm_masks)
        start_time -= resumed.elapsed
    first_step = 1 if resumed is None else resumed.step + 1
    step, saved_at = first_step - 1, time.monotonic()
    between_saves = CHECKPOINT_SECONDS if checkpoint_seconds is None else checkpoint_seconds
    model.train()
    for step in range(first_step, tc.max_steps + 1):
        if cursor + tc.batch_size > len(order):
            order, cursor = torch.randperm(len(train_data), generator=shuffle), 0
        batch = train_data[order[cursor : cursor + tc.batch_size]].to(device)
        cursor += tc.batch_size
        loss = _loss(model, batch, config, mlm_masks)
        if not torch.isfinite(loss):
            status = "diverged"
            curve.append({"step": step, "loss": float(loss.item())})
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        schedule.step()
        metrics = None
        if step % tc.eval_every == 0 or step == tc.max_steps:
            metrics = evaluate(model, test_set)
            accuracy = metrics["accuracy"]
            curve.append({"step": step, "loss": loss.item(), "accuracy": accuracy})
        if on_step is not None:
            on_step({"step": step, "max_steps": tc.max_steps, "loss": loss.item(), "accuracy": accuracy})
        if metrics is not None and tc.early_stop_accuracy and accuracy >= tc.early_stop_accuracy:
            break
        if metrics is not None and halt is not None and (halted := halt(step, accuracy)):
            break
        if checkpoint is not None and step < tc.max_steps and time.monotonic() - saved_at >= between_saves:
            loop = LoopState(step=step, cursor=cursor, order=order, shuffle=shuffle.get_state(),
                             mlm_masks=mlm_masks.get_state(), curve=curve, accuracy=accuracy,
                             elapsed=time.perf_counter() - start_time)
            save_checkpoint(checkpoint, config.run_id, model, optimizer, schedule, loop)
            saved_at = time.monotonic()
    return Fit(status=status, step=step, curve=curve, metrics=metrics, start_time=start_time, halted=halted)


def _loss(model: LanguageModel, batch: Batch, config: RunConfig, mlm_masks: torch.Generator) -> torch.Tensor:
    """The training loss of one batch: cross-entropy on its scored positions (with JRT or MLM, only
    from the prefix's last token on), plus ``mlm_weight`` times the loss on masked prefix tokens."""
    tc = config.train
    inputs = batch.inputs
    if tc.mlm:
        mask_token = config.model.vocab_size - 1  # reserved: RunConfig checks the task never uses it
        inputs, mlm_targets = mask_prefix(inputs, batch.prefix_len, tc.mlm_prob, mask_token, mlm_masks)
    hidden = model.hidden_states(inputs, batch.prefix_len)  # (B, T, D)
    labels = batch.labels
    if model.prefix_aware or tc.mlm:  # JRT: next-token loss only from the prefix's last token on
        labels = labels_after_prefix(labels, batch.prefix_len)
    scored = labels != IGNORE_INDEX  # (B, T)
    loss = F.cross_entropy(model.head(hidden[scored]), labels[scored])  # head only where scored
    if tc.mlm:
        loss = loss + tc.mlm_weight * mlm_loss(model.head, hidden, mlm_targets)
    return loss


def final_evaluations(config: RunConfig, model: LanguageModel, test_sets: list[Batch],
                       last: dict | None) -> tuple[dict, list[dict]]:
    """The headline metrics and ``metrics["evals"]``: every eval task, the headline task at each of
    ``eval_lengths``, and the headline test set under each eviction policy.

    ``last`` (the last step's headline evaluation) is the headline unless the task is generative:
    the final metrics then carry the greedy scores too. A length evaluation stores its task's
    ``length_unit`` and ``bits_per_unit`` so that reports draw the information bound from the
    results alone, without rebuilding the task.
    """
    tc, headline = config.train, config.test_tasks[0]
    metrics = last
    if metrics is None or headline.generative:
        metrics = evaluate(model, test_sets[0], greedy=headline.generative)
    finals = [metrics] + [evaluate(model, data, greedy=task.generative)
                          for task, data in zip(config.test_tasks[1:], test_sets[1:])]
    evals = [
        {"task": task.name, "seq_len": task.seq_len, "setting": task.setting,
         "state_size": model.state_size(task.seq_len), **final}
        for task, final in zip(config.test_tasks, finals)
    ]
    for length, task in config.length_tasks.items():  # length generalisation: the headline at other lengths
        data = generate_once(task, tc.num_test_examples, eval_seed(tc.seed))
        final = evaluate(model, data, greedy=task.generative)
        axis = {"length": length, "length_unit": task.length_unit, "bits_per_unit": task.bits_per_unit()}
        evals.append({"task": task.name, "seq_len": task.seq_len, "setting": headline.setting, **axis,
                      "state_size": model.state_size(task.seq_len), **final})
    for spec in config.eval_policies:  # state_size comes with each: what that budget holds
        under_policy = evaluate(model, test_sets[0], policy=spec.policy, budget=spec.budget, mode=spec.mode)
        evals.append({"task": headline.name, "seq_len": headline.seq_len, "setting": headline.setting,
                      **under_policy})
    return metrics, evals
