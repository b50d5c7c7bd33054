"""The base config classes, below every other recallkit module (it imports none of them).

Every config is a frozen pydantic model that refuses unknown fields (:class:`StrictModel`). Mixer
and task configs are open families: each mixer / task file subclasses :class:`MixerConfig` /
:class:`TaskConfig` with a ``name`` literal, its package registers the class under that name
(:meth:`ConfigFamily.register`), and a plain dict ``{"name": key, **fields}`` then resolves to the
right class (:meth:`ConfigFamily.resolve`) without this module importing the families.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, ClassVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class StrictModel(BaseModel):
    """Base for every config: unknown fields are errors, instances are immutable, a bool is not a
    number (pydantic would read ``batch_size=True`` as 1), and no float field takes NaN or infinity."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key)
                if field is not None and _bool_for_number(field.annotation, value):
                    raise ValueError(f"{key} takes numbers, not a bool: {value!r}")
        return data


def _options(annotation: Any) -> list[Any]:
    """A field type's alternatives, unions flattened and ``Annotated`` constraints dropped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _options(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [option for arg in get_args(annotation) for option in _options(arg)]
    return [annotation]


def _bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a bool where ``annotation`` takes an int or float and no bool."""
    options = _options(annotation)
    if isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"):  # numpy, torch
        return bool not in options and any(option in (int, float) for option in options)
    if isinstance(value, (list, tuple)):
        items = [arg for option in options if get_origin(option) in (list, tuple)
                 for arg in get_args(option) if arg is not Ellipsis]
        return any(_bool_for_number(item_type, item) for item in value for item_type in items)
    return False


class ConfigFamily(StrictModel):
    """A family of configs told apart by their ``name`` literal, kept in the family's ``registry``."""

    family: ClassVar[str] = "config"
    registry: ClassVar[dict[str, type[ConfigFamily]]]

    name: str

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if ConfigFamily in cls.__bases__:
            cls.registry = {}  # a direct subclass of ConfigFamily roots a new family

    @classmethod
    def register(cls, *classes: type[ConfigFamily]) -> None:
        """Register each class under its ``name`` literal (a later class of a name replaces the earlier)."""
        for config_cls in classes:
            key = config_cls.model_fields["name"].default
            if not isinstance(key, str):
                raise TypeError(f"{config_cls.__name__} needs a name literal with a default to be registered")
            cls.registry[key] = config_cls

    @classmethod
    def resolve(cls, value: Any) -> Any:
        """``{"name": key, **fields}`` -> the registered config class for ``key``; instances and
        other values pass through (pydantic then reports them)."""
        if isinstance(value, cls) or not isinstance(value, dict):
            return value
        key = value.get("name")
        if key not in cls.registry:
            raise ValueError(f"unknown {cls.family} {key!r}; known: {', '.join(sorted(cls.registry))}")
        return cls.registry[key](**value)


DT_LIMIT = 10.0  # dt = 10 already keeps exp(-10) of a state with A = -1; 1e6 gave NaN models at init
DtMin = Annotated[float, Field(gt=0, le=DT_LIMIT,
                               description="dt at init is log-uniform in [dt_min, dt_max]")]
DtMax = Annotated[float, Field(gt=0, le=DT_LIMIT)]


class MixerConfig(ConfigFamily):
    """Base of every mixer's config. ``name`` is the registry key in ``recallkit.MIXERS``.

    ``short_conv`` > 1 puts a depthwise causal conv of that many taps in front of the mixer
    (the Zoology / Based recipe); 0 = none.
    """

    family: ClassVar[str] = "mixer"
    short_conv: int = Field(default=0, ge=0)

    def check_width(self, d_model: int) -> None:
        """Raise ValueError if the mixer cannot run at model width ``d_model`` (checked by ``ModelConfig``
        so a bad width fails at config time, not at build time); by default every width works."""

    def check_length(self, seq_len: int) -> None:
        """Raise ValueError if the mixer cannot read sequences of ``seq_len`` tokens (checked by
        ``RunConfig`` against every task, so it fails when the sweep loads, not mid-run); by default
        any length works."""

    def describe(self) -> str:
        """Short human label in tables and plots (without the short conv, which ``describe_mixer`` adds)."""
        return self.name

    @model_validator(mode="after")
    def _check_dt_range(self) -> MixerConfig:
        """The mixers with a dt initialisation range (``DtMin``, ``DtMax``) need dt_min <= dt_max."""
        low, high = getattr(self, "dt_min", None), getattr(self, "dt_max", None)
        if low is not None and high is not None and low > high:
            raise ValueError(f"{self.name} dt_min={low} exceeds dt_max={high}")
        return self

    def _require_divisible(self, width: int, heads: int, what: str = "num_heads") -> None:
        """The width check most mixers share: ``width`` (d_model, or a width derived from it) splits
        into ``heads`` equal heads."""
        if width % heads:
            raise ValueError(f"d_model={width} is not divisible by {self.name} {what}={heads}")

    @field_validator("short_conv")
    @classmethod
    def _kernel(cls, value: int) -> int:
        if value == 1:
            raise ValueError("short_conv=1 is a per-channel scale, not a conv; use 0 (none) or >= 2 taps")
        return value


class TaskConfig(ConfigFamily):
    """Base of every task's config. ``name`` is the registry key in ``recallkit.TASKS``.

    Subclasses implement ``generate(num_examples, seed) -> Batch``. Capabilities are declared here
    with their defaults, so callers read them instead of probing for them; a task overrides the
    ones it has (as a class attribute, a property or a config field).

    Attributes:
        generative: the answer is one span that greedy generation is scored on (``rk.evaluate``
            with ``greedy=True``); False scores teacher-forced next-token predictions.
        filler_token: the padding id, None when the task does not say (``read_twice`` needs one).
            Several tasks make it a config field, so the None default is set on each subclass
            without one (:meth:`__pydantic_init_subclass__`) rather than here: a value here would
            make pydantic warn that each such field shadows it.
        length_unit: the unit of the task's length axis (``"characters"``, ``"entries"``), None
            when it has none; a task with one implements ``length_range``, ``at_length`` and
            ``bits_per_unit`` (:mod:`recallkit.tasks.lengths`).
    """

    family: ClassVar[str] = "task"
    generative: ClassVar[bool] = False
    filler_token: ClassVar[int | None]
    length_unit: ClassVar[str | None] = None
    vocab_size: int = Field(gt=1)
    seq_len: int = Field(gt=1)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "filler_token" not in cls.model_fields and not hasattr(cls, "filler_token"):
            cls.filler_token = None

    @property
    def setting(self) -> str:
        """The report panel of this task: tasks differing only in how the prompt is presented (read
        twice) share one, so their models land on one frontier."""
        return f"{self.name} T={self.seq_len}"

    @property
    def has_length_axis(self) -> bool:
        """Whether the task can be rebuilt at other lengths (length generalisation evaluations)."""
        return self.length_unit is not None

    def max_prefix_len(self) -> int | None:
        """Exact upper bound of ``prefix_len`` over every example the task generates, None when the
        task does not declare one (``read_twice`` needs it to size the repeated prompt)."""
        return None

    def length_range(self) -> tuple[int, int]:
        """Lowest and highest length the task draws (inclusive); only on a task with a length axis."""
        raise self._no_length_axis()

    def at_length(self, length: int) -> TaskConfig:
        """The same task with every example at ``length``; only on a task with a length axis."""
        raise self._no_length_axis()

    def bits_per_unit(self) -> float:
        """Bits of information per unit of length; only on a task with a length axis."""
        raise self._no_length_axis()

    def _no_length_axis(self) -> ValueError:
        return ValueError(f"task {self.name!r} has no length axis (it declares no length_unit)")

    def generate(self, num_examples: int, seed: int):  # pragma: no cover - abstract
        raise NotImplementedError
