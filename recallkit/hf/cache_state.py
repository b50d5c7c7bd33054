"""Inference state of Hugging Face models: counted on the real cache, and derived from the config alone.

recallkit puts every model on one accuracy vs inference-state frontier, where state is the numbers
(elements) a model must keep per sequence to continue after ``seq_len`` tokens (README, "What is
measured"). For transformers models that state lives in the ``Cache`` returned as ``output.cache``
(``past_key_values`` in older releases, still accepted with a deprecation warning in 5.24): per layer,
``keys``/``values`` ``(B, H_kv, T, d_head)`` for attention, ``conv_states`` ``(B, C, K)`` and
``recurrent_states`` for linear-attention/SSM layers (Mamba ``(B, d_inner, N)``, Mamba-2
``(B, H, P, N)``, Gated DeltaNet ``(B, H_v, d_k, d_v)``), and both in hybrid layers (Falcon-H1).
:func:`cache_numel` counts what that object holds; :func:`expected_state_size` derives the same from
the architecture's definition.

One honest difference: a depthwise causal conv of kernel K needs only its last K - 1 inputs to
produce the next output, but transformers keeps K columns per conv state (``causal_conv1d_update``
concatenates the state with the new input and drops the oldest column unread). So the real cache
holds ``channels`` numbers per conv layer more than the model needs. :func:`expected_state_size`
reports the needed K - 1 by default (the number recallkit's own mixers report, so frontiers are
comparable); ``allocated=True`` reproduces transformers' K, which is what :func:`cache_numel` sees.
Sliding-window layers keep ``min(T, W - 1)`` tokens in both: the window of W positions includes the
query token, whose key and value are computed on the step itself.
"""

from __future__ import annotations

import torch

from recallkit.errors import RecallkitError
from recallkit.ops.numerics import owned

RECURRENT_KINDS = ("mamba_ssm", "gdn_recurrent")  # kept in float32 by transformers even for bf16 models
_ATTENTION_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
_STATE_MODELS = ("mamba", "mamba2", "qwen3_next", "lfm2", "falcon_h1")


def _per_batch(tensor) -> int:
    if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
        return 0
    return tensor.numel() // tensor.shape[0]


def cache_numel_parts(cache) -> dict[str, int]:
    """Numbers held per sequence by a transformers ``Cache``, split into ``kv``, ``conv`` and ``recurrent``.

    ``kv`` counts every layer's ``keys`` and ``values`` (and a sparse-attention indexer's
    ``indexer_keys``); ``conv`` and ``recurrent`` count the linear-attention layers' ``conv_states`` and
    ``recurrent_states`` (several per layer when a layer keeps more than one). Position counters, masks
    and other bookkeeping are not model state and are skipped. Each tensor's numel is divided by its
    batch size (dim 0), so the result is per sequence.
    """
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise RecallkitError(f"expected a transformers Cache with .layers, got {type(cache).__name__}")
    parts = {"kv": 0, "conv": 0, "recurrent": 0}
    for layer in layers:
        for name in ("keys", "values", "indexer_keys"):
            parts["kv"] += _per_batch(getattr(layer, name, None))
        for name, part in (("conv_states", "conv"), ("recurrent_states", "recurrent")):
            for tensor in (getattr(layer, name, None) or {}).values():
                parts[part] += _per_batch(tensor)
    return parts


def cache_numel(cache) -> int:
    """Numbers held per sequence by a transformers ``Cache`` (see :func:`cache_numel_parts`)."""
    return sum(cache_numel_parts(cache).values())


def layer_tensors(layer) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor a transformers cache layer holds."""
    found = [(name, getattr(layer, name, None)) for name in ("keys", "values", "indexer_keys")]
    for name in ("conv_states", "recurrent_states"):
        found += [(f"{name}[{key}]", t) for key, t in (getattr(layer, name, None) or {}).items()]
    return [(name, t) for name, t in found if isinstance(t, torch.Tensor)]


def compact_cache(cache) -> None:
    """Every layer's keys and values own their storage: a transformers sliding-window layer keeps a
    slice of the whole block's keys after a prefill, which keeps all T of them alive for w - 1."""
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values", "indexer_keys"):
            tensor = getattr(layer, name, None)
            if isinstance(tensor, torch.Tensor):
                setattr(layer, name, owned(tensor))


def cache_bytes(cache) -> int:
    """Bytes held per sequence by a transformers ``Cache``, each tensor at its own dtype."""
    return sum(_per_batch(t) * t.element_size() for layer in cache.layers for _, t in layer_tensors(layer))


def _layer_types(config) -> list[str]:
    """One type per layer, as the model dispatches them (``layer_types``, else sliding if windowed)."""
    types = getattr(config, "layer_types", None)
    if types is None:
        windowed = getattr(config, "sliding_window", None) is not None
        types = ["sliding_attention" if windowed else "full_attention"] * config.num_hidden_layers
    return list(types)


def _kv_per_token(config) -> int:
    """2 * num_kv_heads * head_dim: one key and one value vector per KV head and token."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * kv_heads * head_dim


def _attention(config, layer_type: str, seq_len: int) -> tuple[str, int]:
    if layer_type == "full_attention":
        return "attention_kv", _kv_per_token(config) * seq_len
    window = config.sliding_window if layer_type == "sliding_attention" else config.attention_chunk_size
    return "sliding_kv", _kv_per_token(config) * min(seq_len, window - 1)


def _mamba2_parts(d_inner: int, heads: int, head_dim: int, groups: int, d_state: int, kernel: int, conv):
    """Mamba-2 (SSD): conv over x, B, C (d_inner + 2 G N channels); SSM state H x P x N."""
    channels = d_inner + 2 * groups * d_state
    return {"mamba_conv": channels * conv(kernel), "mamba_ssm": heads * head_dim * d_state}


def _layer_state(config, layer_type: str, seq_len: int, conv) -> dict[str, int]:
    """State of one layer after ``seq_len`` tokens; ``conv(K)`` is the columns kept by a kernel-K conv."""
    kind = config.model_type
    if kind == "mamba":  # Mamba-1: conv over x (d_inner channels); SSM state d_inner x N (Gu & Dao 2023)
        d_inner = config.intermediate_size
        return {"mamba_conv": d_inner * conv(config.conv_kernel), "mamba_ssm": d_inner * config.state_size}
    if kind == "mamba2":
        c = config
        return _mamba2_parts(c.expand * c.hidden_size, c.num_heads, c.head_dim, c.n_groups, c.state_size,
                             c.conv_kernel, conv)
    if layer_type in _ATTENTION_TYPES:
        key, numel = _attention(config, layer_type, seq_len)
        return {key: numel}
    if kind == "qwen3_next" and layer_type == "linear_attention":
        # Gated DeltaNet: conv over q, k, v; one d_k x d_v fast-weight matrix per value head.
        c = config
        key_dim = c.linear_num_key_heads * c.linear_key_head_dim
        value_dim = c.linear_num_value_heads * c.linear_value_head_dim
        return {
            "gdn_conv": (2 * key_dim + value_dim) * conv(c.linear_conv_kernel_dim),
            "gdn_recurrent": c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim,
        }
    if kind == "lfm2" and layer_type == "conv":  # gated short conv over the hidden state, kernel conv_L_cache
        return {"short_conv": config.hidden_size * conv(config.conv_L_cache)}
    if kind == "falcon_h1" and layer_type == "hybrid":  # attention and Mamba-2 side by side in one layer
        c = config
        d_inner = c.mamba_d_ssm if c.mamba_d_ssm is not None else c.mamba_expand * c.hidden_size
        state = _mamba2_parts(d_inner, c.mamba_n_heads, c.mamba_d_head, c.mamba_n_groups, c.mamba_d_state,
                              c.mamba_d_conv, conv)
        return {"attention_kv": _kv_per_token(c) * seq_len, **state}
    raise RecallkitError(
        f"no state formula for {kind!r} layer type {layer_type!r}; supported: attention-only models "
        f"({', '.join(_ATTENTION_TYPES)}) and {', '.join(_STATE_MODELS)}"
    )


def _check_plain_attention(config) -> None:
    """Refuse attention variants whose cache is not 2 x H_kv x d_head per token (MLA, shared KV layers)."""
    for name in ("kv_lora_rank", "v_head_dim", "kv_sharing_modes", "num_kv_shared_layers"):
        if getattr(config, name, None) is not None:
            raise RecallkitError(f"no state formula for {config.model_type!r}: its config sets {name}")


def expected_state_size(config, seq_len: int, allocated: bool = False) -> dict[str, int]:
    """Numbers of inference state per sequence after ``seq_len`` tokens, per kind, from the config alone.

    Kinds (present only when the model has them), each summed over layers:
    ``attention_kv`` 2 * num_kv_heads * head_dim * seq_len per full-attention layer; ``sliding_kv`` the
    same with seq_len capped at window - 1; ``mamba_conv``, ``gdn_conv``, ``short_conv`` channels * (K - 1)
    for a depthwise causal conv of kernel K; ``mamba_ssm`` d_inner * N (Mamba) or heads * head_dim * N
    (Mamba-2, Falcon-H1); ``gdn_recurrent`` value_heads * d_k * d_v (Gated DeltaNet). Recurrent and conv
    states do not grow with seq_len. ``allocated=True`` counts conv states at K columns, as transformers'
    cache stores them (see the module docstring); the default counts what the model needs.
    """
    if seq_len < 0:
        raise RecallkitError(f"seq_len must be >= 0, got {seq_len}")
    if config.model_type not in _STATE_MODELS:
        _check_plain_attention(config)
    types = _layer_types(config)
    layer_configs = getattr(config, "per_layer_config", None) or [config] * len(types)
    conv = (lambda kernel: kernel) if allocated else (lambda kernel: kernel - 1)
    total: dict[str, int] = {}
    for layer_config, layer_type in zip(layer_configs, types):
        for kind, numel in _layer_state(layer_config, layer_type, seq_len, conv).items():
            total[kind] = total.get(kind, 0) + numel
    return total


def state_bytes(
    config,
    seq_len: int,
    dtype: torch.dtype,
    recurrent_dtype: torch.dtype | None = torch.float32,
    allocated: bool = False,
) -> int:
    """Bytes of inference state per sequence: :func:`expected_state_size` at ``dtype``.

    Recurrent states (``mamba_ssm``, ``gdn_recurrent``) are counted at ``recurrent_dtype``: transformers
    keeps them in float32 even for bfloat16 models (the scans accumulate in float32 and the cache stores
    the result). Pass ``recurrent_dtype=None`` to count them at ``dtype`` too. ``allocated=True`` counts
    conv states as transformers stores them, so it equals :func:`cache_bytes` of the real cache.
    """
    recurrent_size = torch.empty((), dtype=recurrent_dtype or dtype).element_size()
    size = torch.empty((), dtype=dtype).element_size()
    sizes = expected_state_size(config, seq_len, allocated=allocated)
    return sum(numel * (recurrent_size if kind in RECURRENT_KINDS else size) for kind, numel in sizes.items())
