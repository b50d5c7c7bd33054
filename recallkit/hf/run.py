"""One evaluation-only run of a pretrained model (a ``PretrainedRunConfig`` in a sweep): load the model
(once per process), evaluate the text task in its prompt mode and under its eviction policy, and
return the outcome the store records, with one evaluation row for the report's frontier."""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from recallkit.config import PretrainedRunConfig
from recallkit.hf.adapter import HFModel
from recallkit.hf.load import load_model
from recallkit.hf.text_eval import evaluate_text

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
        spec = config.policy

        def progress(done: int, total: int) -> None:
            if on_step is not None:
                on_step({"step": done, "max_steps": total, "loss": float("nan"), "accuracy": float("nan")})

        chat = bool(getattr(model.tokenizer, "chat_template", None)) if config.chat is None else config.chat
        metrics = evaluate_text(
            model, config.task, num_examples=config.num_examples, seed=config.seed,
            read_twice=config.read_twice, chat=chat,
            policy=None if spec is None else spec.policy, budget=None if spec is None else spec.budget,
            mode="prefill" if spec is None else spec.mode, on_example=progress,
        )
    except Exception as error:  # noqa: BLE001 - a failing run is recorded, the sweep goes on
        tail = traceback.format_exc(limit=-3)
        return {"status": "failed", "error": f"{type(error).__name__}: {error}\n{tail}"}
    evaluation = {key: metrics[key] for key in ("accuracy", "num_examples", "prefill_tokens", "state_size",
                                                "slices") if key in metrics}
    evaluation |= {"task": config.task.name, "seq_len": config.task.length, "setting": config.task.setting}
    if spec is not None:
        evaluation |= {"policy": spec.policy.name, "budget": spec.budget, "mode": spec.mode,
                       "budget_tokens": metrics.get("budget_tokens")}
    return {"status": "done", "metrics": {**metrics, "evals": [evaluation]},
            "state_size": metrics["state_size"],
            "num_params": model.num_params(), "wall_time": time.perf_counter() - start}
