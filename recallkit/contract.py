"""The model contract, checked on any model: recallkit's own or a pretrained one through its adapter.

Cached or chunked inference silently differing from the full forward is the bug users of recurrent
and KV-cached models report most. :func:`check_model` runs, on random tokens (a prefix-aware model
with a prefix of random length per sequence, read whole by the first prefill):

    prefill          prefill(x) logits == forward(x)
    step loop        prefill(x[:, :P]) then step(x_t) for t >= P == forward(x) (P = 1, or the prefix)
    split s          prefill(x[:, :s]) then prefill(x[:, s:]) from that state == forward(x), several s
    steps after s    prefill(x[:, :s]) then step(x_t) for t >= s == forward(x), the same s
    causality        changing x[:, t + 1:] leaves forward(x)[:, :t + 1] unchanged, several t
    batch            each row's forward alone == its row in the batch
    state size       state_size(t) == the numbers the real state holds per sequence after t tokens,
                     read by prefill, after every step and before and after every resumed split

each with its max abs difference against a tolerance scaled to the logits' magnitude.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from recallkit.config import PretrainedRunConfig, RunConfig
from recallkit.mixers.base import state_numel
from recallkit.model import build_model


@dataclass(frozen=True)
class Check:
    """One check: its name, the measured max abs difference, the tolerance and the verdict."""

    name: str
    difference: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.difference <= self.tolerance

    def line(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        return f"{verdict} {self.name:<22} max |diff| {self.difference:.3g} (tolerance {self.tolerance:.3g})"


def held_numbers(state: Any, batch_size: int) -> int:
    """Numbers one sequence's real state holds: the tensors of a recallkit state, or a transformers
    cache's (``recallkit.hf``)."""
    cache = getattr(state, "cache", None)
    if cache is not None:
        from recallkit.hf.cache_state import cache_numel

        return cache_numel(cache)
    numel = state_numel(state.layers)
    if numel % batch_size:
        raise ValueError(f"the state holds {numel} numbers for {batch_size} sequences: some of it is "
                         "not per sequence (every state tensor must be batch-first)")
    return numel // batch_size


def _readable_length(model: Any, length: int) -> int:
    """The longest sequence up to ``length`` tokens that the model reads: within recallkit's learned
    ``max_position`` (0 = no limit) and every layer mixer's ``check_length`` (Hyena's ``max_len``), or
    a pretrained model's ``max_context``."""
    limit = getattr(model.config, "max_position", 0) or getattr(model, "max_context", None)
    length = min(length, limit or length)
    for mixer in getattr(model.config, "layer_mixers", []):
        while length > 0:
            try:
                mixer.check_length(length)
                break
            except ValueError:
                length -= 1
    return length


def _diff(a: Tensor, b: Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


HALF_ULPS = 4
"""Units of rounding (of the largest |logit|) that forms of a bfloat16 or float16 model may differ by:
summed in other orders, the prefill, the step loop and a split read differ by 1-2 ulps."""


@torch.no_grad()
def check_model(model: Any, *, length: int = 24, batch_size: int = 3, seed: int = 0, vocab: int | None = None,
                rtol: float | None = None) -> list[Check]:
    """Run the contract checks on ``model`` (eval mode): a list of :class:`Check`.

    Args:
        model: a ``LanguageModel`` or an ``HFModel`` (anything with forward / prefill / step / state_size).
        length: tokens per sequence (T >= 4), capped at the positions the model can read (learned
            absolute positions, a pretrained model's context): a model trained at T=16 with
            ``max_position=16`` cannot read 24 tokens, and that is no contract violation.
        batch_size: sequences (>= 2 for the batch check).
        seed: the random tokens' seed (a local generator).
        vocab: draw tokens below this id (default: the model's vocabulary).
        rtol: tolerance relative to the largest |logit| (at least 1); default 1e-4 for float32 and
            float64 weights, ``HALF_ULPS`` units of rounding (of that logit, at least 1) for bfloat16 /
            float16 ones (a half-precision model's forms differ in the last bits of every logit).
    """
    if rtol is None:
        dtype = model.embed.weight.dtype
        rtol = 1e-4 if torch.finfo(dtype).bits >= 32 else HALF_ULPS * torch.finfo(dtype).eps
    length = _readable_length(model, length)
    if length < 4 or batch_size < 2:
        raise ValueError(f"check_model needs length >= 4 (within the model's positions) and batch_size >= 2; "
                         f"got {length}, {batch_size}")
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator().manual_seed(seed)
        high = vocab or model.embed.weight.shape[0]
        tokens = torch.randint(0, high, (batch_size, length), generator=generator)
        tokens = tokens.to(model.embed.weight.device)
        prefix = None
        if getattr(model, "prefix_aware", False):  # a prefix of 2 .. T / 2 tokens per sequence
            prefix = torch.randint(2, length // 2 + 1, (batch_size,), generator=generator).to(tokens.device)
        first = 1 if prefix is None else int(prefix.max())  # the first prefill reads the whole prefix
        full = model(tokens, prefix)
        tolerance = rtol * max(1.0, full.abs().max().item())
        held: list[tuple[int, int]] = []  # (state_size(t), numbers the real state holds) after t tokens

        def hold(t: int, state: Any) -> None:
            held.append((model.state_size(t), held_numbers(state, batch_size)))

        def steps_from(start: int) -> Tensor:
            """prefill(x[:, :start]) then step(x_t) for the rest: the logits (B, T, V)."""
            logits, state = model.prefill(tokens[:, :start], prefix)
            stepped = list(logits.unbind(1))
            for t in range(start, length):
                step_logits, state = model.step(tokens[:, t], state)
                stepped.append(step_logits)
                hold(t + 1, state)
            return torch.stack(stepped, 1)

        logits, state = model.prefill(tokens, prefix)
        checks = [Check("prefill", _diff(logits, full), tolerance)]
        hold(length, state)
        checks.append(Check("step loop", _diff(steps_from(first), full), tolerance))
        for split in sorted({max(first, s) for s in (1, length // 3, length // 2, length - 1)}):
            head, state = model.prefill(tokens[:, :split], prefix)
            hold(split, state)
            tail, state = model.prefill(tokens[:, split:], state=state)
            hold(length, state)
            checks.append(Check(f"split at {split}", _diff(torch.cat([head, tail], 1), full), tolerance))
            if split > first:  # steps after ``first`` are the step loop
                checks.append(Check(f"steps after {split}", _diff(steps_from(split), full), tolerance))
        checks.append(_causality(model, tokens, prefix, full, high, generator, tolerance))
        alone = torch.cat([model(tokens[i : i + 1], None if prefix is None else prefix[i : i + 1])
                           for i in range(batch_size)])
        checks.append(Check("batch independence", _diff(alone, full), tolerance))
        checks.append(Check("state size", max(abs(expected - n) for expected, n in held), 0))
        return checks
    finally:
        model.train(was_training)


def _causality(model: Any, tokens: Tensor, prefix: Tensor | None, full: Tensor, high: int,
               generator: torch.Generator, tolerance: float) -> Check:
    """Other tokens after t change no logit up to t, for several t; a prefix-aware model's prefix
    positions read the whole prefix, so t starts at the prefix's last token."""
    length = tokens.shape[1]
    first = 0 if prefix is None else int(prefix.max()) - 1
    worst = 0.0
    for t in sorted({first, (first + length - 1) // 2, length - 2}):
        changed = tokens.clone()
        changed[:, t + 1 :] = torch.randint(0, high, changed[:, t + 1 :].shape, generator=generator)
        worst = max(worst, _diff(model(changed, prefix)[:, : t + 1], full[:, : t + 1]))
    return Check("causality", worst, tolerance)


def models_to_check(source: str, seed: int = 0) -> list[tuple[str, Callable[[], Any]]]:
    """``(label, load)`` pairs for ``source``, each ``load()`` building or loading one model (so that
    one that cannot load fails alone): a results directory gives one model per distinct model config
    of its runs (a trained run's built from its seed: the contract is the architecture's; a
    pretrained run's loaded from its source at its dtype); anything else is a pretrained source for
    ``recallkit.hf.load_model``."""
    if Path(source).is_dir() and Path(source, "results.sqlite").is_file():
        from recallkit.report.load import read_rows

        models: dict[str, tuple[str, Callable[[], Any]]] = {}
        for row in read_rows(source):
            if "pretrained" in row["config"]["model"]:  # an evaluation of a pretrained model
                pretrained = PretrainedRunConfig.model_validate(row["config"]).model
                key = pretrained.model_dump_json()
                half = "" if pretrained.dtype == "float32" else f" ({pretrained.dtype})"
                label = pretrained.pretrained + half
                models.setdefault(key, (label, functools.partial(_load_pretrained, pretrained.pretrained,
                                                                 pretrained.dtype)))
                continue
            config = RunConfig.model_validate(row["config"])
            label = config.progress_label  # with its width: one architecture at two widths is two models
            if any(taken == label for taken, _ in models.values()):  # another setting: name one of its runs
                label += f" (run {row['run_id']})"
            models.setdefault(config.model.model_dump_json(), (label, functools.partial(_build, config)))
        return list(models.values())
    return [(source, functools.partial(_load_pretrained, source, "float32", seed))]


def _build(config: RunConfig) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        return build_model(config.model)


def _load_pretrained(source: str, dtype: str, seed: int = 0) -> Any:
    from recallkit.hf import load_model

    return load_model(source, dtype=getattr(torch, dtype), seed=seed)
