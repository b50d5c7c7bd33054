"""The mixer contract (docs/design.md section 3).

A mixer maps (B, T, D) to (B, T, D) and has two equivalent forms: a parallel form for training
(``forward``) and a recurrent form for inference (``prefill`` then ``step``). Its state is a small
dataclass of tensors whose total ``numel`` per sequence is exactly ``state_size(T)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from recallkit.base_config import MixerConfig


def state_numel(state: Any) -> int:
    """Total number of elements held in a (nested) state of tensors, dataclasses, dicts and lists."""
    if isinstance(state, Tensor):
        return state.numel()
    if dataclasses.is_dataclass(state):
        return sum(state_numel(getattr(state, f.name)) for f in dataclasses.fields(state))
    if isinstance(state, dict):
        return sum(state_numel(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_numel(v) for v in state)
    return 0


class Mixer(nn.Module):
    """Base class of every sequence mixer.

    Subclasses set ``Config`` (their pydantic config, a :class:`MixerConfig` with a ``name``
    literal) and implement the five methods below. Capabilities are class attributes.

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
        """Parallel form. x: (B, T, D) -> (B, T, D)."""
        raise NotImplementedError

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
