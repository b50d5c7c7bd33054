"""Configuration: pydantic models, all frozen and ``extra="forbid"``.

The configs of a model and a run, above the mixers, tasks and policies they name. Mixer and task
configs are open families (``recallkit.base_config``): a plain dict ``{"name": ..., **fields}``
resolves to the registered subclass when a model or run config is built.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_serializer, model_validator

from recallkit.base_config import MixerConfig, StrictModel, TaskConfig
from recallkit.kv import Policy, make_policy, resolve_budget
from recallkit.kv.budget import CompressionRatio, as_number
from recallkit.mixers import MIXERS, mixer_config
from recallkit.sources import ARCHS_WITHOUT_ATTENTION, unknown_tiny
from recallkit.tasks import task_config
from recallkit.text_tasks import TextTaskConfig, make_text_task


BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Unicode's explicit directional formatting characters (UAX #9): marks, embeddings, overrides, isolates."""


def storable_text(value: str | None) -> str | None:
    """A free-text field (a label) as SQLite, JSON files and one-line tables keep it: valid Unicode, no
    lone surrogates, no control characters (a newline split the row of the terminal table) and no
    bidirectional overrides (U+202E reversed the rest of the row in a terminal that honours it)."""
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(f"{value!r} is not valid text: a lone surrogate "
                             f"{value[error.start]!r} at position {error.start}") from None
        control = next((i for i, c in enumerate(value)
                        if unicodedata.category(c) == "Cc" or c in BIDI_CONTROLS), None)
        if control is not None:
            raise ValueError(f"{value!r} holds a control character {value[control]!r} at position {control}")
    return value


class ModelConfig(StrictModel):
    """A decoder-only language model: embed -> [norm -> mixer -> norm -> MLP] x L -> norm -> head.

    ``mixer`` may be a list: layer ``i`` uses ``mixer[i % len(mixer)]`` (Zoology's Hybrid).
    """

    vocab_size: int = Field(gt=1)
    d_model: int = Field(default=64, gt=0)
    num_layers: int = Field(default=2, gt=0)
    mixer: SerializeAsAny[MixerConfig] | list[SerializeAsAny[MixerConfig]]
    mlp: Literal["gelu", "swiglu", "none"] = "gelu"
    mlp_ratio: int = Field(default=4, gt=0)
    max_position: int = Field(default=0, ge=0, description="learned absolute positions; 0 = none")
    norm_eps: float = Field(default=1e-5, gt=0, le=1)

    @field_validator("mixer", mode="before")
    @classmethod
    def _resolve_mixer(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("mixer schedule is empty")
            return [mixer_config(v) for v in value]
        return mixer_config(value)

    @property
    def layer_mixers(self) -> list[MixerConfig]:
        """The mixer config of every layer, the hybrid schedule cycled over layers."""
        schedule = self.mixer if isinstance(self.mixer, list) else [self.mixer]
        return [schedule[i % len(schedule)] for i in range(self.num_layers)]

    @model_validator(mode="after")
    def _check_widths(self) -> ModelConfig:
        for mixer in self.layer_mixers:
            mixer.check_width(self.d_model)
        return self


class TrainConfig(StrictModel):
    """Optimisation and evaluation budget of one run (docs/design.md section 6).

    The defaults are the recipe measured to solve MQAR (V=256, T=64, 8 pairs) with 2-layer
    attention (RoPE + short conv, d=64) in 500-700 steps on a 2-core CPU (see sweeps/quickstart.py).
    """

    lr: float = Field(default=5e-3, gt=0)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    batch_size: int = Field(default=32, gt=0)
    max_steps: int = Field(default=1000, gt=0)
    warmup_steps: int = Field(default=50, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float = Field(default=1.0, gt=0)
    num_train_examples: int = Field(default=32_000, gt=0)
    num_test_examples: int = Field(default=256, gt=0)
    eval_every: int = Field(default=100, gt=0)
    early_stop_accuracy: float | None = Field(default=0.99, gt=0, le=1)
    seed: int = Field(default=0, ge=0, lt=2**31)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mlm: bool = Field(default=False, description="add JRT's masked-language-model loss on the prefix")
    mlm_prob: float = Field(default=0.15, gt=0, lt=1, description="fraction of prefix tokens masked")
    mlm_weight: float = Field(default=0.25, gt=0,
                              description="weight of the MLM loss beside next-token")

    @model_validator(mode="after")
    def _check_adamw(self) -> TrainConfig:
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {self.betas}")
        # AdamW's first step moves a parameter by lr / (1 - beta1) in float32; a larger one cannot be
        # represented, and torch fails inside the optimiser instead of the run diverging.
        if self.lr / (1 - self.betas[0]) >= torch.finfo(torch.float32).max:
            raise ValueError(f"lr={self.lr:g} is too large: AdamW's step lr / (1 - betas[0]) "
                             f"overflows float32")
        return self


class EvalPolicy(StrictModel):
    """One extra evaluation of the trained model with every attention layer's KV cache under an
    eviction policy (``recallkit.inference``): a ``POLICIES`` key or ``{"name": key, **options}``,
    a budget and a mode.

    The budget is given one of two ways, exactly one of them: ``budget``, tokens per sequence and KV
    head or a fraction of the context length (``round(f * T)`` tokens), or ``compression_ratio``
    r in [0, 1), the fraction evicted, as kvpress spells it: ``int(T * (1 - r))`` tokens, rounded
    down like kvpress (at least 1; ``recallkit.kv.budget.budget_from_compression_ratio``). With a
    ratio, ``budget`` reads as a :class:`~recallkit.kv.budget.CompressionRatio` (the float 1 - r
    that resolves the kvpress way), and the serialized config holds ``compression_ratio`` alone; a
    config without one serializes as before (its run id is unchanged).
    """

    policy: SerializeAsAny[Policy]
    budget: int | float | None = None
    mode: Literal["continuous", "prefill"] = "continuous"
    compression_ratio: float | None = Field(
        default=None, ge=0, lt=1, description="kvpress's spelling of the budget: the fraction evicted")

    @field_validator("policy", mode="before")
    @classmethod
    def _resolve_policy(cls, value: Any) -> Policy:
        return make_policy(value)

    @field_validator("budget", mode="before")
    @classmethod
    def _python_number(cls, value: Any) -> Any:
        return as_number(value)

    @field_validator("budget")
    @classmethod
    def _check_budget(cls, value: int | float | None) -> int | float | None:
        if value is not None:
            resolve_budget(value, 1)
        return value

    @model_validator(mode="after")
    def _one_budget(self) -> EvalPolicy:
        if self.compression_ratio is None:  # frozen model: set once, while validating
            object.__setattr__(self, "budget", self.policy.budget_or_whole(self.budget))
        if (self.budget is None) == (self.compression_ratio is None):
            raise ValueError("give exactly one of budget (tokens or a fraction of the context) and "
                             "compression_ratio (the fraction evicted, as kvpress)")
        if self.compression_ratio is not None:  # frozen model: set once, while validating
            ratio = CompressionRatio(self.compression_ratio)
            object.__setattr__(self, "budget", self.policy.budget_or_whole(ratio))
        elif isinstance(self.budget, int):
            self.policy.check_budget(self.budget)
        return self

    @model_serializer(mode="wrap")
    def _one_budget_field(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        data.pop("budget" if self.compression_ratio is not None else "compression_ratio", None)
        return data


LATER_FIELDS: dict[str, Any] = {
    "eval_policies": [], "train.mlm": False, "train.mlm_prob": 0.15, "train.mlm_weight": 0.25,
    "eval_lengths": [],
}
"""Dotted paths of RunConfig fields added after the first results, with their defaults."""


class RunConfig(StrictModel):
    """One training run: a model, a training task, an evaluation task and a budget."""

    model: ModelConfig
    task: SerializeAsAny[TaskConfig]
    eval_tasks: list[SerializeAsAny[TaskConfig]] = Field(
        default_factory=list,
        description="evaluation tasks (e.g. longer sequences); default: the training task. The first "
        "one drives early stopping and the headline metrics.",
    )
    train: TrainConfig = TrainConfig()
    label: str | None = Field(default=None, description="name in tables and plots; default: the mixer")
    eval_policies: list[EvalPolicy] = Field(
        default_factory=list,
        description="after training, evaluate on the first eval task under each KV-cache eviction policy",
    )
    eval_lengths: list[int] = Field(
        default_factory=list,
        description="after training, evaluate the first eval task at each of these lengths (copy length, "
        "string length, phone-book entries: its length axis), e.g. beyond the training range",
    )

    _label = field_validator("label")(storable_text)

    @field_validator("task", mode="before")
    @classmethod
    def _resolve_task(cls, value: Any) -> Any:
        return task_config(value)

    @field_validator("eval_tasks", mode="before")
    @classmethod
    def _resolve_eval_tasks(cls, value: Any) -> Any:
        return [task_config(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _check_mlm(self) -> RunConfig:
        largest_vocab = max(t.vocab_size for t in (self.task, *self.eval_tasks))
        if self.train.mlm and largest_vocab >= self.model.vocab_size:
            raise ValueError(
                f"train.mlm needs a reserved mask token: set model.vocab_size above the task's vocab_size "
                f"(the mask is token {self.model.vocab_size - 1}, which the task must not use)"
            )
        return self

    @model_validator(mode="after")
    def _check_lengths(self) -> RunConfig:
        if self.eval_lengths and not self.test_tasks[0].has_length_axis:
            raise ValueError(f"eval_lengths needs a task with a length axis (`recallkit list tasks`: one "
                             f"that declares a length_unit); task {self.test_tasks[0].name!r} has none")
        if any(length < 1 for length in self.eval_lengths):
            raise ValueError(f"eval_lengths must be >= 1; got {self.eval_lengths}")
        return self

    @model_validator(mode="after")
    def _check_vocab(self) -> RunConfig:
        for task in (self.task, *self.eval_tasks, *self.length_tasks.values()):
            if task.vocab_size > self.model.vocab_size:
                raise ValueError(
                    f"model.vocab_size={self.model.vocab_size} is smaller than the task's "
                    f"vocab_size={task.vocab_size}"
                )
            if self.model.max_position and task.seq_len > self.model.max_position:
                raise ValueError(
                    f"task seq_len={task.seq_len} exceeds model.max_position={self.model.max_position}"
                )
            for mixer in self.model.layer_mixers:
                mixer.check_length(task.seq_len)
        return self

    @model_validator(mode="after")
    def _check_policies(self) -> RunConfig:
        if self.eval_policies and not any(MIXERS[m.name].kv_cache for m in self.model.layer_mixers):
            names = ", ".join(dict.fromkeys(m.name for m in self.model.layer_mixers))
            raise ValueError(f"eval_policies evict the attention mixer's KV cache, and this model has no "
                             f"attention layer (mixers: {names}; mla's latent and fox's decayed caches "
                             "are not evicted); add one or drop eval_policies")
        return self

    @property
    def test_tasks(self) -> list[TaskConfig]:
        """The tasks used for evaluation, the first one being the headline."""
        return list(self.eval_tasks) or [self.task]

    @property
    def length_tasks(self) -> dict[int, TaskConfig]:
        """The headline task at each of ``eval_lengths`` (validated to have a length axis)."""
        return {length: self.test_tasks[0].at_length(length) for length in self.eval_lengths}

    @property
    def display_label(self) -> str:
        """Label in tables and plots: ``label`` or the mixer's short description."""
        if self.label:
            return self.label
        return "+".join(describe_mixer(m) for m in dict.fromkeys(self.model.layer_mixers))

    @property
    def progress_label(self) -> str:
        """Name of the run in progress bars and logs."""
        return f"{self.display_label} d={self.model.d_model}"

    @property
    def progress_total(self) -> int:
        """Units of progress the run reports (training steps)."""
        return self.train.max_steps

    def canonical_json(self) -> str:
        """JSON with sorted keys: the identity of the run. Fields added after results existed are
        left out while at their default (``LATER_FIELDS``), so earlier runs keep their identity and
        a sweep directory written before them still resumes."""
        data = self.model_dump(mode="json")
        for path, default in LATER_FIELDS.items():
            *parents, name = path.split(".")
            holder = data
            for parent in parents:
                holder = holder[parent]
            if holder.get(name) == default:
                del holder[name]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """Stable hash of the canonical config (16 hex digits)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


def describe_mixer(mixer: MixerConfig) -> str:
    """Short human label of a mixer config, e.g. ``linear_attention(taylor)``."""
    label = mixer.describe()
    return f"{label}+conv{mixer.short_conv}" if mixer.short_conv else label


class PretrainedModel(StrictModel):
    """A pretrained model by source (``recallkit.hf.load_model``): a model directory, a .gguf file,
    ``smollm2-135m`` (the embedded default) or ``tiny:<arch>``."""

    pretrained: str = Field(min_length=1)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("pretrained")
    @classmethod
    def _known_tiny(cls, value: str) -> str:
        if value.startswith("tiny:") and (reason := unknown_tiny(value.removeprefix("tiny:"))):
            raise ValueError(reason)
        return value

    @property
    def tiny(self) -> str | None:
        """The architecture of a ``tiny:<arch>`` source, else None."""
        return self.pretrained.removeprefix("tiny:") if self.pretrained.startswith("tiny:") else None


def _directory_arch(source: str) -> str | None:
    """The ``model_type`` in a model directory's config.json, when ``source`` is one that reads (the
    loader reports every other case); a run that cannot work is refused here, not retried by every
    rerun."""
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


class PretrainedRunConfig(StrictModel):
    """An evaluation-only run of a pretrained model on a text task (no training) in one prompt mode:
    with the full cache, then under each of ``eval_policies`` (one evaluation row each, as a trained
    run's ``eval_policies``). The examples are the same for every row, and each prompt is read once
    for the full cache and every prefill-mode policy (:mod:`recallkit.hf.prompt_read`).

    Example: ``PretrainedRunConfig(model={"pretrained": "smollm2-135m"}, task={"name": "phonebook_text",
    "num_entries": 20}, read_twice=True, eval_policies=[{"policy": "h2o", "budget": 0.25}])``.
    """

    model: PretrainedModel
    task: SerializeAsAny[TextTaskConfig]
    read_twice: bool = Field(default=False,
                             description="JRT-Prompt: context and question read twice before the "
                                         "answer cue (the paper repeats the context only)")
    eval_policies: list[EvalPolicy] = Field(
        default_factory=list, description="also evaluate under each KV-cache eviction policy and budget")
    chat: bool | None = Field(default=None, description="prompt as a chat turn (instruct models); "
                              "None = when the tokenizer has a chat template")
    num_examples: int = Field(default=50, gt=0)
    seed: int = Field(default=0, ge=0, lt=2**31)
    label: str | None = Field(default=None, description="name in tables and plots; default: the source")

    _label = field_validator("label")(storable_text)

    @field_validator("task", mode="before")
    @classmethod
    def _resolve_task(cls, value: Any) -> Any:
        return make_text_task(value) if isinstance(value, (dict, str)) else value

    @model_validator(mode="after")
    def _fits_a_tiny_model(self) -> PretrainedRunConfig:
        """What a tiny model, or a model directory without attention, cannot do: refused before the run
        (it failed, and every rerun retried it)."""
        if self.model.tiny is not None and self.chat:
            raise ValueError("chat=True: tiny models' tokenizers have no chat template")
        arch = self.model.tiny or _directory_arch(self.model.pretrained)
        if self.eval_policies and arch in ARCHS_WITHOUT_ATTENTION:
            raise ValueError(f"eval_policies: {self.model.pretrained} has no attention layer, so no KV cache "
                             "to evict")
        return self

    @property
    def display_label(self) -> str:
        return (self.label or self.model.pretrained) + (" read twice" if self.read_twice else "")

    @property
    def progress_label(self) -> str:
        policies = len(self.eval_policies)
        return self.display_label + (f" [+{policies} policies]" if policies else "")

    @property
    def progress_total(self) -> int:
        """Units of progress the run reports (examples)."""
        return self.num_examples

    def canonical_json(self) -> str:
        """JSON with sorted keys: the identity of the run."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """Stable hash of the canonical config (16 hex digits)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


AnyRunConfig = RunConfig | PretrainedRunConfig


def run_config(data: dict[str, Any] | AnyRunConfig) -> AnyRunConfig:
    """A training run's or a pretrained evaluation's config from its dict (or JSON-decoded) form: a
    model with ``pretrained`` makes the latter."""
    if isinstance(data, (RunConfig, PretrainedRunConfig)):
        return data
    model = data.get("model") if isinstance(data, dict) else None
    if isinstance(model, PretrainedModel) or (isinstance(model, dict) and "pretrained" in model):
        return PretrainedRunConfig.model_validate(data)
    return RunConfig.model_validate(data)
