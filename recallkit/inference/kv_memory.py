"""KV-cache memory per token for MHA / GQA / MQA / MLA (docs/design.md section 8).

Per layer and token, softmax attention caches a key and a value for each of its H_kv key/value
heads, 2 * H_kv * d_h numbers (MHA: H_kv = H; GQA: 1 < H_kv < H; MQA: H_kv = 1); MLA caches its
latent and decoupled RoPE key, d_c + d_R numbers. Mixers without a KV cache report None: linear
attention and SSMs hold a fixed-size state; long convolutions hold their input history (see their
``state_size``). Bytes = numbers x bytes per number
(2 for fp16/bf16, the default, as in serving).
"""

from __future__ import annotations

import torch
from torch import nn

from recallkit.mixers import MIXERS, Mixer, build_mixer


def kv_numbers_per_token(model_or_mixer: nn.Module) -> int | None:
    """Cache numbers one more token adds, summed over layers; None if no layer has a KV cache.

    Args:
        model_or_mixer: a ``LanguageModel`` (sums its layers; recurrent layers of a hybrid add 0)
            or one mixer (a short-conv wrapper counts its inner mixer: the conv tail is fixed).

    Returns:
        Numbers per token per sequence, or None for a fixed-size state. A sliding window adds
        this per token only until the window is full.
    """
    blocks = getattr(model_or_mixer, "blocks", None)
    mixers = [block.mixer for block in blocks] if blocks is not None else [model_or_mixer]
    counts = [_mixer_numbers(mixer) for mixer in mixers]
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


def kv_bytes_per_token(model_or_mixer: nn.Module, bytes_per_number: int = 2) -> int | None:
    """KV-cache bytes one more token adds (see :func:`kv_numbers_per_token`); None if fixed-size.

    Args:
        model_or_mixer: a ``LanguageModel`` or one mixer.
        bytes_per_number: element size, 2 for fp16/bf16 (default), 4 for fp32.
    """
    numbers = kv_numbers_per_token(model_or_mixer)
    return None if numbers is None else numbers * bytes_per_number


def default_kv_numbers_per_token(key: str, d_model: int = 128) -> int | None:
    """KV numbers per token of registry mixer ``key`` with its default config at width ``d_model``."""
    with torch.device("meta"):  # shapes only: no weights are allocated or initialised
        mixer = build_mixer(d_model, MIXERS[key].Config(name=key))
    return kv_numbers_per_token(mixer)


def _mixer_numbers(mixer: Mixer) -> int | None:
    method = getattr(mixer.core, "kv_numbers_per_token", None)  # a short-conv wrapper's tail is fixed
    return None if method is None else method()


def default_state_size(key: str, seq_len: int, d_model: int = 128) -> int | None:
    """State numbers per sequence of registry mixer ``key`` (default config, width ``d_model``) after
    ``seq_len`` tokens: the KV cache, a fixed recurrent state, or a convolution's input history; None
    when that config cannot read ``seq_len`` tokens (a long convolution's ``max_len``)."""
    config = MIXERS[key].Config(name=key)
    try:
        config.check_length(seq_len)
    except ValueError:
        return None
    with torch.device("meta"):
        mixer = build_mixer(d_model, config)
    return mixer.state_size(seq_len)
