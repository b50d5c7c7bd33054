"""Text-level recall tasks for pretrained language models: prompts answered by greedy generation and
scored by exact match (phone book, JSON key-value retrieval, RULER's multi-key needle in a haystack and
variable tracking). Pure Python, seeded by a local ``random.Random``."""

from recallkit.text_tasks.base import TextExample, TextTaskConfig
from recallkit.text_tasks.kv_retrieval import KVRetrievalTextConfig
from recallkit.text_tasks.niah import NiahTextConfig
from recallkit.text_tasks.phonebook import PhonebookTextConfig
from recallkit.text_tasks.registry import TEXT_TASKS, make_text_task
from recallkit.text_tasks.variable_tracking import VariableTrackingTextConfig

__all__ = [
    "TEXT_TASKS", "KVRetrievalTextConfig", "NiahTextConfig", "PhonebookTextConfig", "TextExample",
    "TextTaskConfig", "VariableTrackingTextConfig", "make_text_task",
]
