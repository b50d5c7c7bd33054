"""One evaluation-only run of a pretrained model (a ``PretrainedRunConfig`` in a sweep): load the model
(once per process), evaluate the text task in its prompt mode with the full cache and under each
eviction policy, and return the outcome the store records, with one evaluation row per setting for
the report's frontier (the first, the full cache, is the run's headline)."""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from recallkit.config import PretrainedRunConfig
from recallkit.hf.adapter import HFModel
from recallkit.hf.load import load_model
from recallkit.hf.text_eval import default_chat, evaluate_text_grid

_loaded: dict[tuple[str, str], HFModel] = {}  # the last model loaded in this process


def cached_model(source: str, dtype: str) -> HFModel:
    """``load_model(source)``, reusing the model the previous run of this process loaded."""
    key = (source, dtype)
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = load_model(source, dtype=getattr(torch, dtype))
    return _loaded[key]


def run_pretrained(config: PretrainedRunConfig, on_step: Any = None) -> dict[str, Any]:
    """Evaluate ``config``; a failure is recorded as ``failed`` with its reason (the sweep goes on)."""
    start = time.perf_counter()
    try:
        model = cached_model(config.model.pretrained, config.model.dtype)

        def progress(done: int, total: int) -> None:
            if on_step is not None:
                on_step({"step": done, "max_steps": total, "loss": float("nan"), "accuracy": float("nan")})

        chat = default_chat(model) if config.chat is None else config.chat
        settings = [None, *((spec.policy, spec.budget, spec.mode) for spec in config.eval_policies)]
        results = evaluate_text_grid(model, config.task, settings, num_examples=config.num_examples,
                                     seed=config.seed, read_twice=config.read_twice, chat=chat,
                                     on_example=progress)
    except Exception as error:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        tail = traceback.format_exc(limit=-3)
        return {"status": "failed", "error": f"{type(error).__name__}: {error}\n{tail}"}
    evals = [_evaluation(config, metrics) for metrics in results]
    headline = results[0]
    return {"status": "done", "metrics": {**headline, "evals": evals}, "state_size": headline["state_size"],
            "num_params": model.num_params(), "wall_time": time.perf_counter() - start}


def _evaluation(config: PretrainedRunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """One evaluation row: the frontier's fields of one setting's metrics."""
    fields = ("accuracy", "num_examples", "prefill_tokens", "state_size", "slices")
    row = {key: metrics[key] for key in fields}
    row |= {"task": config.task.name, "seq_len": config.task.length, "setting": config.task.setting}
    if metrics["policy"] is not None:
        row |= {key: metrics[key] for key in ("policy", "budget", "mode", "budget_tokens")}
    return row
