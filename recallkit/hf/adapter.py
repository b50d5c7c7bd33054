"""recallkit's model contract over a Hugging Face causal LM (``transformers`` >= 5).

The adapter gives a pretrained model the methods recallkit's own :class:`~recallkit.model.LanguageModel`
has, so evaluation, eviction, prefix caching and the contract checker treat both alike:

    forward(input_ids (B, T)) -> logits (B, T, V)             # one parallel pass, no cache
    prefill(input_ids, state=None) -> (logits, state)         # through the model's own cache
    step(tokens (B,), state) -> (logits (B, V), state)        # one token through the cache
    init_state(batch_size, cache=None) -> state               # cache= an eviction factory (recallkit.kv)
    state_size(seq_len) -> numbers per sequence the real cache holds after seq_len tokens

The state is :class:`HFState`: the transformers ``Cache`` object and the position. Caches of
transformers are mutated in place by every call, so a state is continued once; ``HFState.copy`` gives
an independent one (prefix caching continues a copy). ``state_size`` is derived from the config per
layer kind (:mod:`recallkit.hf.cache_state`): KV of full and sliding-window attention, Mamba /
Mamba-2 conv and SSM states, Gated DeltaNet recurrent states, short-conv states; conv states are
counted with the K columns transformers stores, so it equals the real cache's numel.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from recallkit.base_config import StrictModel
from recallkit.errors import RecallkitError
from recallkit.hf.cache_state import compact_cache, expected_state_size
from recallkit.hf.evicting import attention_layers, cached_forward, evicting_cache
from recallkit.kv.protocol import CacheFactory

KV_KINDS = ("attention_kv", "sliding_kv")
RESTARTS_FROM_ZERO = ("mamba",)
"""Architectures whose multi-token forward ignores the cached SSM state (transformers 5.24's Mamba-1
scan takes no initial state): after the first block they read one token at a time."""


class PretrainedSpec(StrictModel):
    """What a pretrained model is, for fingerprints and results: its source, architecture, dtype and a
    hash of the transformers config."""

    source: str
    architecture: str
    dtype: str
    config_hash: str


@dataclass
class HFState:
    """A transformers ``Cache`` and the position of the next token (tokens read so far)."""

    cache: Any
    position: int

    def copy(self) -> HFState:
        """An independent copy (transformers caches are mutated in place)."""
        return HFState(copy.deepcopy(self.cache), self.position)


class HFModel(nn.Module):
    """A Hugging Face causal LM behind recallkit's model contract.

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM``), in eval mode.
        tokenizer: its tokenizer (None for a model without one).
        source: where it came from (a directory, a .gguf file, ``smollm2-135m``, ``tiny:llama``).
    """

    prefix_aware = False

    def __init__(self, model: nn.Module, tokenizer: Any, source: str) -> None:
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        hf_config = model.config
        digest = hashlib.sha256(json.dumps(hf_config.to_dict(), sort_keys=True, default=str).encode())
        self.config = PretrainedSpec(source=source, architecture=hf_config.model_type,
                                     dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                                     config_hash=digest.hexdigest()[:16])

    @property
    def hf_config(self) -> Any:
        return self.model.config

    @property
    def embed(self) -> nn.Embedding:
        """The input embedding (its ``weight.device`` is the model's device)."""
        return self.model.get_input_embeddings()

    @property
    def vocab_size(self) -> int:
        return self.embed.weight.shape[0]

    @property
    def max_context(self) -> int | None:
        """Longest context the model was trained for (None: no limit known, e.g. an SSM)."""
        return getattr(self.hf_config, "max_position_embeddings", None)

    def forward(self, input_ids: Tensor, prefix_len: Tensor | None = None) -> Tensor:
        """input_ids (B, T) -> logits (B, T, V), one parallel pass without a cache."""
        return self.model(input_ids=input_ids, use_cache=False).logits

    def init_state(self, batch_size: int, device: torch.device | None = None, *,
                   cache: CacheFactory | None = None) -> HFState:
        """The empty state; ``cache`` puts an evicting KV cache (:mod:`recallkit.kv`) in every
        attention layer, the recurrent layers of a hybrid keep their own state."""
        from transformers import DynamicCache

        if cache is None:
            return HFState(DynamicCache(config=self.hf_config), 0)
        return HFState(evicting_cache(self.model, cache), 0)

    def prefill(self, input_ids: Tensor, prefix_len: Tensor | None = None,
                state: HFState | None = None) -> tuple[Tensor, HFState]:
        """Read (B, T) tokens from ``state`` (None = empty; it is mutated): logits (B, T, V), state.

        A state can be continued once (transformers caches change in place): continuing it again is a
        one-line error; continue ``state.copy()`` to branch."""
        self._check_ids(input_ids)
        state = self.init_state(input_ids.shape[0]) if state is None else self._check_state(state)
        if input_ids.shape[1] == 0:  # nothing to read: the state as it is
            empty = torch.zeros(*input_ids.shape, self.vocab_size, dtype=self.embed.weight.dtype)
            return empty.to(input_ids.device), state
        if state.position and input_ids.shape[1] > 1 and self.config.architecture in RESTARTS_FROM_ZERO:
            stepped = []
            for token in input_ids.unbind(1):  # each step from the state the previous one returned (position)
                logits, state = self.step(token, state)
                stepped.append(logits)
            return torch.stack(stepped, dim=1), state
        logits, cache = cached_forward(self.model, input_ids, state.cache)
        if input_ids.shape[1] > 1:  # a block's sliding-window keys: views into all of the block's
            compact_cache(cache)
        position = state.position + input_ids.shape[1]
        cache.recallkit_position = position  # what the cache has read, whichever HFState points to it
        return logits, HFState(cache, position)

    def _check_ids(self, input_ids: Tensor) -> None:
        if input_ids.ndim != 2:
            raise RecallkitError(f"token ids are (B, T); got shape {tuple(input_ids.shape)}")
        if input_ids.numel() and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < self.vocab_size:
            raise RecallkitError(f"token ids must lie in [0, {self.vocab_size}); got "
                                 f"{int(input_ids.min())} .. {int(input_ids.max())}")

    def _check_state(self, state: HFState) -> HFState:
        if not isinstance(state, HFState):
            raise RecallkitError(f"a pretrained model continues an HFState, not a {type(state).__name__}")
        read = getattr(state.cache, "recallkit_position", None)  # None: a cache built elsewhere (a load)
        if read is not None and read != state.position:
            raise RecallkitError(f"this state (at token {state.position}) was already continued to token "
                                 f"{read}; continue state.copy() to branch from it")
        return state

    def step(self, token: Tensor, state: HFState) -> tuple[Tensor, HFState]:
        """One token per sequence, (B,) -> logits (B, V) and the state after it."""
        if token.ndim != 1:
            raise RecallkitError(f"step reads one token per sequence, shape (B,); got {tuple(token.shape)}")
        logits, state = self.prefill(token[:, None], state=state)
        return logits[:, -1], state

    def state_parts(self, seq_len: int) -> dict[str, int]:
        """Numbers per sequence after ``seq_len`` tokens, per kind of layer state."""
        return expected_state_size(self.hf_config, seq_len, allocated=True)

    def state_size(self, seq_len: int) -> int:
        """Numbers of inference state per sequence after ``seq_len`` tokens, summed over layers."""
        return sum(self.state_parts(seq_len).values())

    def kv_state_size(self, seq_len: int) -> int:
        """The part of :meth:`state_size` held in attention KV caches (what eviction bounds)."""
        return sum(v for k, v in self.state_parts(seq_len).items() if k in KV_KINDS)

    @property
    def has_attention(self) -> bool:
        return bool(attention_layers(self.model))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
