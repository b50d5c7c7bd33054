"""Packed training: runs that share a model and a task train as one stacked model (issue 25).

K runs whose configs differ only in their optimisation (learning rate, weight decay, betas,
schedule, clipping, step budget, evaluation cadence, early stop, seed and so their data) train as
one :class:`~recallkit.packing.PackedModels`: one vmapped forward and backward per step over a
(K, B, T) batch, member k reading its own batch. Everything else is per member and is exactly the
loop of :func:`recallkit.training.train`:

    lr_k(s)   = lr_k * lr_factor(s - 1, warmup_k, max_steps_k, min_lr_ratio_k)   (step s = 1, 2, ..)
    g_k      <- g_k * min(1, clip_k / (||g_k||_2 + 1e-6))       (the norm over all of member k's grads)
    AdamW_k:  p <- p (1 - lr_k wd_k);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
              p <- p - lr_k / (1 - b1^s) * m / (sqrt(v) / sqrt(1 - b2^s) + eps)

with weight decay only where :func:`recallkit.training.decays` says, as torch's AdamW with the
loop's parameter groups. A member leaves the pack when it stops (its budget, its early stop, a
non-finite loss, its halt rule) and gets its own final evaluations and result; the others go on.
``tests/test_packed_training.py`` checks, for every mixer key, that a packed member's loss at every
step equals the same run trained alone, in float64. In float32 they differ by rounding (vmap runs the
kernels in ``fixed_paths``), which a sensitive run's training can amplify: its result then depends
on its pack (``metrics["packed"]`` records the pack's size), as a run's does on its device.

Not packed: runs with JRT's MLM loss (its masked positions differ in number per example), and
mid-run checkpoints (a killed packed group restarts its unfinished members from step 0; finished
members are already in the store). A member's wall time is the group's time until it left.

What packing buys is measured by ``recallkit bench`` (``packed_speedup``): little on a 2-core CPU,
where a small model's step is bound by memory traffic (docs/results.md); it is for GPUs, where
small models are bound by kernel launches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from recallkit.config import RunConfig
from recallkit.evaluate import evaluate
from recallkit.model import LanguageModel
from recallkit.packing import PackedModels
from recallkit.tasks.base import Batch, eval_seed, train_seed
from recallkit.tasks.shared_data import generate_once
from recallkit.training import (
    Fit,
    HaltRule,
    RunResult,
    decays,
    initial_model,
    lr_factor,
    resolve_device,
    run_result,
)

EPS = 1e-8  # torch AdamW's default
CLIP_EPS = 1e-6  # torch clip_grad_norm_'s


def pack_key(config: RunConfig) -> str | None:
    """Runs with the same key can train packed: same model, task, batch size (as taken: a training
    set smaller than the batch makes smaller batches) and device. None for a run that never packs
    (JRT's MLM loss)."""
    tc = config.train
    if tc.mlm:
        return None
    shared = {"model": config.model.model_dump(mode="json"), "task": config.task.model_dump(mode="json"),
              "batch_size": min(tc.batch_size, tc.num_train_examples), "device": tc.device}
    return json.dumps(shared, sort_keys=True)


@dataclass
class _Member:
    """One run of the pack: its data, its cursor and what its loop has recorded."""

    config: RunConfig
    model: LanguageModel  # evaluations load the member's current weights into it
    train_data: Batch
    test_sets: list[Batch]
    shuffle: torch.Generator
    order: torch.Tensor
    cursor: int = 0
    curve: list[dict] = field(default_factory=list)
    accuracy: float = float("nan")
    halt: HaltRule | None = None

    def next_batch(self) -> Batch:
        tc = self.config.train
        if self.cursor + tc.batch_size > len(self.order):
            self.order, self.cursor = torch.randperm(len(self.train_data), generator=self.shuffle), 0
        batch = self.train_data[self.order[self.cursor : self.cursor + tc.batch_size]]
        self.cursor += tc.batch_size
        return batch


def train_packed(configs: list[RunConfig], on_step: Callable[[RunConfig, dict], None] | None = None,
                 on_result: Callable[[RunConfig, RunResult], None] | None = None, device: str | None = None,
                 halts: list[HaltRule | None] | None = None) -> list[RunResult]:
    """Train ``configs`` (one :func:`pack_key`) as one packed model; return their results in order.

    ``on_step(config, {"step", "max_steps", "loss", "accuracy"})`` after each of a member's steps;
    ``on_result(config, result)`` as soon as a member has stopped and been evaluated (a sweep stores
    it then); ``halts`` gives each member a halt rule (as ``train(halt=...)``).
    """
    if not configs:
        return []
    keys = {pack_key(c) for c in configs}
    if None in keys or len(keys) > 1:
        raise ValueError("packed runs must share one pack_key (model, task, batch size, device; no MLM)")
    if halts is not None and len(halts) != len(configs):
        raise ValueError(f"{len(halts)} halt rules for {len(configs)} packed runs")
    start_time = time.perf_counter()
    where = resolve_device(device or configs[0].train.device)
    members = [_member(c, where, halt) for c, halt in zip(configs, halts or [None] * len(configs))]
    packed = PackedModels([m.model for m in members])
    decay = {name: decays(p) for name, p in members[0].model.named_parameters()}
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in packed.params.items()}
    results: dict[int, RunResult] = {}
    active = list(range(len(members)))  # indices of the members still in the pack, in pack order
    step = 0
    while active:
        step += 1
        batches = [members[i].next_batch().to(where) for i in active]
        losses = packed.losses(*(torch.stack([getattr(b, f) for b in batches]) for f in
                                 ("inputs", "labels", "prefix_len")))  # (K,)
        values = losses.detach().tolist()  # the step's one wait for the device
        finite = [math.isfinite(value) for value in values]
        stopped: dict[int, Fit] = {}
        before: dict[int, dict] = {}  # a diverged member ends with the weights it had before this step
        for row, i in enumerate(active):
            if not finite[row]:
                members[i].curve.append({"step": step, "loss": values[row]})
                stopped[row] = Fit("diverged", step, members[i].curve, None, start_time)
                before[row] = packed.member_state(row)
        if any(finite):
            (losses if all(finite) else losses[torch.tensor(finite, device=where)]).sum().backward()
            _adamw_step(packed, moments, decay, [members[i].config for i in active], step)
        for row, i in enumerate(active):
            if row not in stopped and (fit := _after_step(members[i], packed, row, step,
                                                          values[row], start_time, on_step)):
                stopped[row] = fit
        if stopped:
            for row, fit in stopped.items():
                member = members[active[row]]
                member.model.load_state_dict(before.get(row) or packed.member_state(row))
                results[active[row]] = run_result(member.config, member.model, member.test_sets, fit)
                results[active[row]].metrics["packed"] = len(members)  # its wall time is the pack's
                if on_result is not None:
                    on_result(member.config, results[active[row]])
            keep = [row for row in range(len(active)) if row not in stopped]
            active = [active[row] for row in keep]
            if active:
                packed.keep(keep)
                moments = {name: (m[keep], v[keep]) for name, (m, v) in moments.items()}
    return [results[i] for i in range(len(members))]


def _member(config: RunConfig, device: torch.device, halt: HaltRule | None) -> _Member:
    """A member at step 0: the model, data and shuffling of ``train(config)``."""
    tc = config.train
    shuffle = torch.Generator().manual_seed(tc.seed)
    train_data = generate_once(config.task, tc.num_train_examples, train_seed(tc.seed))
    return _Member(
        config=config, model=initial_model(config, device), train_data=train_data,
        test_sets=[generate_once(t, tc.num_test_examples, eval_seed(tc.seed)) for t in config.test_tasks],
        shuffle=shuffle, order=torch.randperm(len(train_data), generator=shuffle), halt=halt,
    )


def _after_step(member: _Member, packed: PackedModels, row: int, step: int, loss: float, start_time: float,
                on_step: Callable[[RunConfig, dict], None] | None) -> Fit | None:
    """The loop's bookkeeping after member ``row``'s step: evaluation, progress, and why it stops."""
    tc = member.config.train
    metrics = None
    if step % tc.eval_every == 0 or step == tc.max_steps:
        member.model.load_state_dict(packed.member_state(row))
        metrics = evaluate(member.model, member.test_sets[0])
        member.accuracy = metrics["accuracy"]
        member.curve.append({"step": step, "loss": loss, "accuracy": member.accuracy})
    if on_step is not None:
        on_step(member.config,
                {"step": step, "max_steps": tc.max_steps, "loss": loss, "accuracy": member.accuracy})
    halted = None
    if metrics is not None and member.halt is not None and not (
            tc.early_stop_accuracy and member.accuracy >= tc.early_stop_accuracy):
        halted = member.halt(step, member.accuracy)
    if step == tc.max_steps or halted or (
            metrics is not None and tc.early_stop_accuracy and member.accuracy >= tc.early_stop_accuracy):
        return Fit("done", step, member.curve, metrics, start_time, halted)
    return None


@torch.no_grad()
def _adamw_step(packed: PackedModels, moments: dict, decay: dict[str, bool], configs: list[RunConfig],
                step: int) -> None:
    """Clip each member's gradient to its ``grad_clip`` and take its AdamW step (equations above)."""
    grads = {name: p.grad for name, p in packed.params.items() if p.grad is not None}
    trains = [c.train for c in configs]
    like = next(iter(grads.values()))
    lrs = [t.lr * lr_factor(step - 1, t.warmup_steps, t.max_steps, t.min_lr_ratio) for t in trains]
    per_member = {  # (K,) each, made once per step in Python floats (double), as torch's AdamW does
        "clip": [t.grad_clip for t in trains],
        "decay": [1 - lr * t.weight_decay for lr, t in zip(lrs, trains)],
        "b1": [t.betas[0] for t in trains], "b2": [t.betas[1] for t in trains],
        "1-b1": [1 - t.betas[0] for t in trains], "1-b2": [1 - t.betas[1] for t in trains],
        "step_size": [lr / (1 - t.betas[0] ** step) for lr, t in zip(lrs, trains)],
        "sqrt_c2": [math.sqrt(1 - t.betas[1] ** step) for t in trains],
    }
    k = {name: torch.tensor(v, dtype=like.dtype, device=like.device) for name, v in per_member.items()}
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()  # (K,)
    clip = (k["clip"] / (norms + CLIP_EPS)).clamp(max=1.0)
    for name, p in packed.params.items():
        g = grads.get(name)
        if g is None:
            continue
        shape = (-1, *[1] * (p.ndim - 1))  # (K, 1, ..): one value per member, broadcast over its tensor
        g = g * clip.view(shape)
        if decay[name]:
            p.mul_(k["decay"].view(shape))
        m, v = moments[name]
        m.mul_(k["b1"].view(shape)).add_(k["1-b1"].view(shape) * g)
        v.mul_(k["b2"].view(shape)).add_(k["1-b2"].view(shape) * g * g)
        p.sub_(k["step_size"].view(shape) * m / (v.sqrt() / k["sqrt_c2"].view(shape) + EPS))
        p.grad = None
