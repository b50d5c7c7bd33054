"""LanguageModel: embed -> [norm -> mixer -> residual -> norm -> MLP -> residual] x L -> norm -> tied head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recallkit.config import ModelConfig
from recallkit.errors import RecallkitError
from recallkit.kv.protocol import CacheFactory
from recallkit.mixers import build_mixer
from recallkit.mixers.base import compact_state, state_tensors


@dataclass
class ModelState:
    """Recurrent state of the whole model: one mixer state per layer and the next position."""

    layers: list[Any]
    position: int


class MLP(nn.Module):
    """Position-wise feed-forward: GELU (d -> r d -> d) or SwiGLU (d -> 2 r d -> gate -> d)."""

    def __init__(self, d_model: int, ratio: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        hidden = ratio * d_model
        self.up = nn.Linear(d_model, 2 * hidden if kind == "swiglu" else hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, h = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * h)
        return self.down(F.gelu(h))


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        d = config.d_model
        self.mixer_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.mixer = build_mixer(d, config.layer_mixers[layer])
        self.mlp = None
        if config.mlp != "none":
            self.mlp_norm = nn.LayerNorm(d, eps=config.norm_eps)
            self.mlp = MLP(d, config.mlp_ratio, config.mlp)

    def _mlp(self, x: Tensor) -> Tensor:
        return x if self.mlp is None else x + self.mlp(self.mlp_norm(x))

    def forward(self, x: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        return self._mlp(x + self.mixer(self.mixer_norm(x), prefix_len))

    def prefill(self, x: Tensor, prefix_len: Tensor | None, state: Any) -> tuple[Tensor, Any]:
        y, state = self.mixer.prefill(self.mixer_norm(x), prefix_len, state)
        return self._mlp(x + y), compact_state(state)

    def step(self, x_t: Tensor, state: Any) -> tuple[Tensor, Any]:
        y, state = self.mixer.step(self.mixer_norm(x_t), state)
        return self._mlp(x_t + y), state


class LanguageModel(nn.Module):
    """Decoder-only LM over token ids; the output head is tied to the token embedding.

    The parallel form (``forward``) trains; ``prefill`` + ``step`` decode with per-layer mixer
    states, and ``state_size(T)`` sums the mixers' states (the inference memory on the frontier).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.position = None
        if config.max_position:
            self.position = nn.Embedding(config.max_position, config.d_model)
            nn.init.normal_(self.position.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)

    def _embed(self, input_ids: Tensor, start: int) -> Tensor:
        x = self.embed(input_ids)  # (B, T, D)
        if self.position is not None:
            end = start + input_ids.shape[1]
            if end > self.config.max_position:
                raise RecallkitError(
                    f"position {end - 1} exceeds the learned positions "
                    f"(max_position={self.config.max_position})"
                )
            x = x + self.position(torch.arange(start, end, device=input_ids.device))
        return x

    @property
    def prefix_aware(self) -> bool:
        """True when some layer reads the prefix non-causally (PLA): a label inside the prefix would
        be visible to it, so training and evaluation score only labels from the prefix's last
        position on (:func:`recallkit.mlm.labels_after_prefix`)."""
        return any(block.mixer.prefix_aware for block in self.blocks)

    def head(self, hidden: Tensor) -> Tensor:
        """Final norm and the tied output projection: (..., D) -> logits (..., V)."""
        return self.final_norm(hidden) @ self.embed.weight.T

    def hidden_states(self, input_ids: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        """Parallel form up to the head: (B, T) -> (B, T, D). Training applies ``head`` only where
        a label is scored, which saves most of the (T, V) logits on recall tasks."""
        x = self._embed(input_ids, 0)
        for block in self.blocks:
            x = block(x, prefix_len)
        return x

    def forward(self, input_ids: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V)."""
        return self.head(self.hidden_states(input_ids, prefix_len))

    def init_state(self, batch_size: int, device: torch.device | None = None, *,
                   cache: CacheFactory | None = None) -> ModelState:
        """Empty state before the first token; ``cache`` builds each attention layer's KV cache
        (e.g. an evicting one, :mod:`recallkit.kv`) instead of the plain one."""
        device = device or self.embed.weight.device
        dtype = self.embed.weight.dtype
        layers, attention_layers = [], 0
        for block in self.blocks:
            if cache is not None and block.mixer.kv_cache:
                layers.append(block.mixer.init_state(batch_size, device, dtype,
                                                     cache=cache(attention_layers)))
                attention_layers += 1
            else:
                layers.append(block.mixer.init_state(batch_size, device, dtype))
        return ModelState(layers, 0)

    def prefill(
        self, input_ids: Tensor, prefix_len: Tensor | None = None, state: ModelState | None = None
    ) -> tuple[Tensor, ModelState]:
        """Process (B, T) tokens from ``state`` (None = empty): logits (B, T, V) and the new state."""
        start = 0 if state is None else self._check_state(state, input_ids.shape[0]).position
        x = self._embed(input_ids, start)
        layer_states = []
        for i, block in enumerate(self.blocks):
            x, s = block.prefill(x, prefix_len, None if state is None else state.layers[i])
            layer_states.append(s)
        return self.head(x), ModelState(layer_states, start + input_ids.shape[1])

    def step(self, token: Tensor, state: ModelState) -> tuple[Tensor, ModelState]:
        """One token per sequence, (B,) -> logits (B, V) and the new state."""
        x = self._embed(token.unsqueeze(1), self._check_state(state, token.shape[0]).position).squeeze(1)
        layer_states = []
        for block, s in zip(self.blocks, state.layers):
            x, s = block.step(x, s)
            layer_states.append(s)
        return self.head(x), ModelState(layer_states, state.position + 1)

    def _check_state(self, state: ModelState, batch_size: int) -> ModelState:
        """``state`` itself, once it is known to have one layer state per block (another model's
        state would otherwise run a layer short, or drop layers, without a word) and to hold
        ``batch_size`` sequences (every state tensor is batch-first)."""
        if not isinstance(state, ModelState) or len(state.layers) != len(self.blocks):
            held = f"{len(state.layers)} layers" if isinstance(state, ModelState) else type(state).__name__
            raise RecallkitError(f"the state holds {held}, this model has {len(self.blocks)}: "
                                 "it is another model's state")
        first = next(state_tensors(state.layers), None)
        if first is not None and first.shape[0] != batch_size:
            raise RecallkitError(f"the state holds {first.shape[0]} sequences, the input {batch_size}")
        return state

    def state_size(self, seq_len: int) -> int:
        """Numbers of inference state per sequence after ``seq_len`` tokens, summed over layers."""
        return sum(block.mixer.state_size(seq_len) for block in self.blocks)

    def kv_state_size(self, seq_len: int) -> int:
        """The part of :meth:`state_size` held in attention KV caches (what eviction bounds)."""
        return sum(block.mixer.core.state_size(seq_len) for block in self.blocks if block.mixer.kv_cache)

    def num_params(self) -> int:
        """Trainable parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def build_model(config: ModelConfig) -> LanguageModel:
    """Build the model described by ``config`` (initialised from the global RNG; seed it first)."""
    return LanguageModel(config)
