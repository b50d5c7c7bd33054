"""The text tasks by key (``TEXT_TASKS``) and :func:`make_text_task`, which builds one from a spec."""

from __future__ import annotations

from typing import Any

from recallkit.text_tasks.base import TextTaskConfig
from recallkit.text_tasks.kv_retrieval import KVRetrievalTextConfig
from recallkit.text_tasks.niah import NiahTextConfig
from recallkit.text_tasks.phonebook import PhonebookTextConfig
from recallkit.text_tasks.variable_tracking import VariableTrackingTextConfig

TEXT_TASKS: dict[str, type[TextTaskConfig]] = {
    cls.model_fields["name"].default: cls
    for cls in (PhonebookTextConfig, KVRetrievalTextConfig, NiahTextConfig, VariableTrackingTextConfig)
}


def make_text_task(spec: str | dict[str, Any] | TextTaskConfig) -> TextTaskConfig:
    """A text task from its key (defaults), a ``{"name": key, **fields}`` dict (e.g. a dumped config)
    or a config (returned as is), e.g. ``make_text_task({"name": "niah_text", "context_words": 2000})``."""
    if isinstance(spec, TextTaskConfig):
        return spec
    fields = {"name": spec} if isinstance(spec, str) else dict(spec)
    key = fields.get("name")
    if key not in TEXT_TASKS:
        raise ValueError(f"unknown text task {key!r}; known: {', '.join(TEXT_TASKS)}")
    return TEXT_TASKS[key](**fields)
