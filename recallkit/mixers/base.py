"""The mixer contract (docs/design.md section 3).

A mixer maps (B, T, D) to (B, T, D) and has two equivalent forms: a parallel form for training
(``forward``) and a recurrent form for inference (``prefill`` then ``step``). Its state is a small
dataclass of tensors whose total ``numel`` per sequence is exactly ``state_size(T)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recallkit.base_config import MixerConfig
from recallkit.ops.numerics import owned


def state_tensors(state: Any) -> Iterator[Tensor]:
    """Every tensor of a (nested) state of tensors, dataclasses, dicts, lists and tuples, in field
    order: the one walk over the state shapes mixers use (other leaves, such as ints, are skipped)."""
    if isinstance(state, Tensor):
        yield state
    elif dataclasses.is_dataclass(state):
        for f in dataclasses.fields(state):
            yield from state_tensors(getattr(state, f.name))
    elif isinstance(state, dict):
        for value in state.values():
            yield from state_tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from state_tensors(value)


def state_numel(state: Any) -> int:
    """Total number of elements held in a (nested) state of tensors, dataclasses, dicts and lists."""
    return sum(tensor.numel() for tensor in state_tensors(state))


def compact_state(state: Any) -> Any:
    """The state with every tensor that is a view into a larger storage replaced by a copy (see
    :func:`recallkit.ops.numerics.owned`), so that a kept state holds ``state_size`` numbers, not the
    prefill's activations. Dataclasses, dicts, lists and tuples are rebuilt, never changed in place;
    other objects (a KV cache) keep their own tensors compact."""
    if isinstance(state, Tensor):
        return owned(state)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        fields = [f.name for f in dataclasses.fields(state) if f.init]
        return dataclasses.replace(state, **{name: compact_state(getattr(state, name)) for name in fields})
    if isinstance(state, dict):
        return {key: compact_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)) and not hasattr(state, "_fields"):
        return type(state)(compact_state(value) for value in state)
    return state


def merge_heads(y: Tensor) -> Tensor:
    """(B, H, T, d) per-head outputs -> (B, T, H * d), heads side by side as the output projection
    reads them."""
    B, H, T, d = y.shape
    return y.transpose(1, 2).reshape(B, T, H * d)


class Mixer(nn.Module):
    """Base class of every sequence mixer.

    Subclasses set ``Config`` (their pydantic config, a :class:`MixerConfig` with a ``name``
    literal) and implement ``prefill``, ``init_state``, ``step`` and ``state_size``; ``forward``
    defaults to ``prefill`` with the state dropped. Capabilities are class attributes, declared here
    with their defaults (as the config declares ``check_width`` and ``describe``), so callers read
    them instead of probing for them.

    Attributes:
        prefix_aware: outputs inside ``prefix_len`` may read the whole prefix (non-causal there).
        kv_cache: the state is a KV cache of the :mod:`recallkit.kv.protocol`; ``init_state`` then
            takes ``cache=`` (a :data:`recallkit.kv.LayerCache`) to hold another cache of it, such
            as an evicting one.
    """

    Config: ClassVar[type[MixerConfig]]
    prefix_aware: ClassVar[bool] = False
    kv_cache: ClassVar[bool] = False

    def __init__(self, d_model: int, config: MixerConfig) -> None:
        super().__init__()
        self.d_model = d_model
        self.config = config

    def forward(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        """Parallel form. x: (B, T, D) -> (B, T, D). By default ``prefill`` from the empty state with
        its state dropped: most mixers' prefill is already their parallel form; a mixer overrides this
        when building the state costs what training does not need."""
        return self.prefill(x, prefix_len)[0]

    def prefill(
        self, x: Tensor, prefix_len: Tensor | None = None, state: Any = None
    ) -> tuple[Tensor, Any]:
        """Process a block of tokens from ``state`` (None = empty): (y (B, T, D), state after it)."""
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        """The empty state, before any token."""
        raise NotImplementedError

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        """Recurrent form: one token x_t (B, D) -> (y_t (B, D), new state)."""
        raise NotImplementedError

    @property
    def core(self) -> Mixer:
        """The mixer doing the sequence mixing: itself, or the one a wrapper (short conv) wraps."""
        return self

    def state_size(self, seq_len: int) -> int:
        """Numbers (elements) of state held per sequence after ``seq_len`` tokens."""
        raise NotImplementedError
