"""The base config classes, below every other recallkit module (it imports none of them).

Every config is a frozen pydantic model that refuses unknown fields (:class:`StrictModel`). Mixer
and task configs are open families: each mixer / task file subclasses :class:`MixerConfig` /
:class:`TaskConfig` with a ``name`` literal, its package registers the class under that name
(:meth:`ConfigFamily.register`), and a plain dict ``{"name": key, **fields}`` then resolves to the
right class (:meth:`ConfigFamily.resolve`) without this module importing the families.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StrictModel(BaseModel):
    """Base for every config: unknown fields are errors and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class MixerConfig(ConfigFamily):
    """Base of every mixer's config. ``name`` is the registry key in ``recallkit.MIXERS``.

    ``short_conv`` > 1 puts a depthwise causal conv of that many taps in front of the mixer
    (the Zoology / Based recipe); 0 = none.
    """

    family: ClassVar[str] = "mixer"
    short_conv: int = Field(default=0, ge=0)

    @field_validator("short_conv")
    @classmethod
    def _kernel(cls, value: int) -> int:
        if value == 1:
            raise ValueError("short_conv=1 is a per-channel scale, not a conv; use 0 (none) or >= 2 taps")
        return value


class TaskConfig(ConfigFamily):
    """Base of every task's config. ``name`` is the registry key in ``recallkit.TASKS``.

    Subclasses implement ``generate(num_examples, seed) -> Batch``.
    """

    family: ClassVar[str] = "task"
    vocab_size: int = Field(gt=1)
    seq_len: int = Field(gt=1)

    @property
    def setting(self) -> str:
        """The report panel of this task: tasks differing only in how the prompt is presented (read
        twice) share one, so their models land on one frontier."""
        return f"{self.name} T={self.seq_len}"

    def generate(self, num_examples: int, seed: int):  # pragma: no cover - abstract
        raise NotImplementedError
