"""Prefix state cache (docs/design.md section 8): save the state after a prefix, reload it, continue.

Any mixer's state works (attention's KV cache, MLA's latents, a recurrent matrix, conv tails):
the :class:`~recallkit.model.ModelState` is flattened generically into named tensors
(``layers.0.key``, ``layers.3.inner.ssm``, ...) stored as a safetensors payload, and the non-tensor
leaves (position counters, None) into a JSON entry of the header. The header also carries the
model's fingerprint, the prefix length, the dtype and a sha256 over the header and tensor bytes.

Loading never imports a class by name and never unpickles: the structure comes from the model's
own ``init_state`` (a template), whose leaves are replaced by the stored ones. A file from another
model, a corrupt or truncated file, or a state of another shape is refused with a one-line
:class:`~recallkit.errors.RecallkitError`. Continuing from a loaded state is bit-identical to
continuing from the in-memory state (same device and kernels).

A pretrained model's state (:class:`~recallkit.hf.adapter.HFState`) holds a transformers
``DynamicCache``; it is flattened layer by layer (``cache.layers.3.keys``,
``cache.layers.0.conv_states.0``, ``cache.layers.0.has_previous_state.0``, ...) and on load written
into the layers of a fresh ``model.init_state(B)`` cache, initialised the way transformers does it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from recallkit.atomic import write_whole
from recallkit.errors import RecallkitError, first_line

if TYPE_CHECKING:  # annotations only: recallkit.model may import recallkit.inference
    from recallkit.model import ModelState

FORMAT = "recallkit.prefix_state/1"
_Leaf = int | float | bool | str | None


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (hex) of the model config JSON and every state_dict entry's name, dtype, shape and bytes.

    A retrained model, another seed, another config or another dtype gives another fingerprint.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        digest.update(json.dumps(config.model_dump(mode="json"), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        _update(digest, name, tensor)
    return digest.hexdigest()


def save_prefix_state(
    model: nn.Module, state: ModelState, path: str | Path, prefix_len: int | None = None, *,
    prefix_ids: Tensor | None = None, encoder_len: Tensor | None = None,
) -> Path:
    """Write ``state`` (the state after ``prefix_len`` tokens) to a safetensors file.

    Args:
        model: the model that produced ``state``; its fingerprint goes into the header.
        state: state after prefilling the prefix, e.g. ``model.prefill(ids[:, :P])[1]``.
        path: destination file (written atomically: a temporary file, then a rename).
        prefix_len: tokens in the prefix; default ``state.position``, which it must equal.
        prefix_ids: the prefix's tokens (B, P); their sha256 goes into the header, and a load that
            names its prefix tokens is then refused for other ones.
        encoder_len: for a prefix-aware model (PLA, JRT-RNN), required: the (B,) ``prefix_len`` its
            prefill was given, the tokens it read whole (zeros for a causal read). Its state depends
            on them, so the header records them and a load must name the same. Other models ignore it.

    Returns:
        The path written.
    """
    prefix_len = state.position if prefix_len is None else prefix_len
    if prefix_len != state.position:
        raise RecallkitError(f"prefix_len={prefix_len} but the state has processed {state.position} tokens")
    if prefix_ids is not None and (prefix_ids.ndim != 2 or prefix_ids.shape[1] != prefix_len):
        raise RecallkitError(f"prefix_ids {tuple(prefix_ids.shape)} are not (batch, {prefix_len}) tokens")
    tensors: dict[str, Tensor] = {}
    leaves: dict[str, _Leaf] = {}
    _flatten(state, "", tensors, leaves)
    batch_size = next(iter(tensors.values())).shape[0] if tensors else 0  # state tensors are batch-first
    if prefix_ids is not None and prefix_ids.shape[0] != batch_size:
        raise RecallkitError(f"prefix_ids {tuple(prefix_ids.shape)} name {prefix_ids.shape[0]} sequences, "
                             f"the state holds {batch_size}")
    # own contiguous CPU copies: safetensors wants contiguous, unshared storage (k, v are views of one qkv)
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in tensors.items()}
    metadata = {
        "format": FORMAT,
        "model_hash": model_fingerprint(model),
        "prefix_len": str(prefix_len),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "leaves": json.dumps(leaves, sort_keys=True),
    }
    if prefix_ids is not None:
        metadata["prefix_sha256"] = _tokens_hash(prefix_ids)
    if getattr(model, "prefix_aware", False):
        metadata["encoder_len"] = json.dumps(_read_whole(encoder_len, batch_size, prefix_len))
    metadata["checksum"] = _checksum(metadata, tensors)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_whole(path, lambda partial: save_file(tensors, partial, metadata=metadata))


def load_prefix_state(model: nn.Module, path: str | Path, *, prefix_ids: Tensor | None = None,
                      encoder_len: Tensor | None = None) -> tuple[ModelState, int]:
    """Read a prefix state saved for ``model``: (state on the model's device, prefix_len).

    ``prefix_ids``: the prefix tokens (B, P) the caller means to continue; the file must have been
    saved with the same ones (``save_prefix_state(..., prefix_ids=...)``). Without them the file is
    keyed by the model and the prefix length only.

    ``encoder_len`` (prefix-aware models, required): the (B,) ``prefix_len`` the caller's prefill
    would have been given (zeros: a causal read); the file must have been saved after the same read.

    Raises:
        RecallkitError: missing file, unreadable/truncated file, another format, a file saved by
            another model, a checksum mismatch, a state whose layout differs from the model's, or
            (with ``prefix_ids``) a file saved for other prefix tokens or without them.
    """
    path = Path(path)
    if not path.is_file():
        raise RecallkitError(f"prefix state file {path} not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        reason = first_line(str(error), type(error).__name__)
        message = f"{path} is not a readable safetensors file (truncated or corrupt?): {reason}"
        raise RecallkitError(message) from None
    if metadata.get("format") != FORMAT:
        found = metadata.get("format")
        raise RecallkitError(f"{path} is not a recallkit prefix state ({FORMAT}); format={found!r}")
    if metadata.get("checksum") != _checksum(metadata, tensors):
        raise RecallkitError(f"{path} is corrupt: its header or tensor data does not match its checksum")
    if metadata.get("model_hash") != model_fingerprint(model):
        raise RecallkitError(f"{path} was saved by another model (other weights or config)")
    if prefix_ids is not None and metadata.get("prefix_sha256") != _tokens_hash(prefix_ids):
        saved = "other prefix tokens" if "prefix_sha256" in metadata else "no record of its prefix tokens"
        raise RecallkitError(f"{path} holds the state of {saved}, not of the prefix_ids given")
    try:
        leaves = json.loads(metadata["leaves"])
        prefix_len = int(metadata["prefix_len"])
    except (KeyError, ValueError) as error:
        raise RecallkitError(f"{path} has a corrupt header: {error}") from None
    if not tensors or not isinstance(leaves, dict):
        raise RecallkitError(f"{path} holds no state tensors or malformed leaves")
    device = next(model.parameters()).device
    batch_size = next(iter(tensors.values())).shape[0]  # every state tensor is batch-first
    if getattr(model, "prefix_aware", False):
        wanted = _read_whole(encoder_len, batch_size, prefix_len)
        if "encoder_len" not in metadata:
            raise RecallkitError(f"{path} does not record the prefix tokens its prefix-aware model read "
                                 "whole (saved before encoder_len was recorded): save the state again")
        if metadata.get("encoder_len") != json.dumps(wanted):
            raise RecallkitError(f"{path} holds the state after reading {metadata.get('encoder_len')} "
                                 f"prefix tokens whole (encoder_len), not {wanted}: a prefix-aware model's "
                                 "state depends on them")
    template = model.init_state(batch_size)
    _check_against_template(path, template, tensors, leaves, prefix_len)
    stored = {name: t.to(device) for name, t in tensors.items()} | leaves
    used: set[str] = set()
    state = _rebuild(template, "", stored, used)
    if unused := sorted(set(stored) - used):
        raise RecallkitError(f"{path} does not fit this model's state layout: unexpected entry {unused[0]!r}")
    return state, prefix_len


def _check_against_template(path: Path, template: Any, tensors: dict[str, Tensor], leaves: dict[str, Any],
                            prefix_len: int) -> None:
    """Refuse a file whose checksum is right but whose content cannot be the state after
    ``prefix_len`` tokens of this model (an edited file with its checksum recomputed): every tensor's
    dtype and shape against the model's own ``init_state`` (a dimension that is empty there grows
    with the prefix: at most ``prefix_len``), and the positions against ``prefix_len``."""
    expected: dict[str, Tensor] = {}
    try:
        _flatten(template, "", expected, {})
    except RecallkitError:  # a state that only ``_rebuild`` can walk (pretrained caches check themselves)
        return
    for name, want in expected.items():
        got = tensors.get(name)
        if got is None:
            continue  # reported by _rebuild with the layout message
        grows = [w == 0 for w in want.shape]
        fits = got.ndim == want.ndim and all(
            g <= prefix_len if grow else g == w for g, w, grow in zip(got.shape, want.shape, grows))
        if not fits or got.dtype != want.dtype:
            raise RecallkitError(f"{path} does not fit this model's state: {name} is {got.dtype} "
                                 f"{tuple(got.shape)}, the model's is {want.dtype} {tuple(want.shape)} "
                                 f"(empty dimensions grow to at most prefix_len={prefix_len})")
    for name, value in sorted(leaves.items(), key=lambda item: item[0] != "position"):  # position first
        if (name == "position" or name.endswith(".seen")) and value != prefix_len:
            raise RecallkitError(f"{path} is inconsistent: {name}={value!r} but prefix_len={prefix_len}")


def _read_whole(encoder_len: Tensor | None, batch_size: int, prefix_len: int) -> list[int]:
    """Per sequence, the prefix tokens a prefix-aware model read whole: min(M, prefix_len), as the
    prefill reads them (M beyond the tokens read is all of them; M = 0 is a causal read)."""
    if encoder_len is None:
        raise RecallkitError("a prefix-aware model's state depends on the prefix tokens its prefill read "
                             "whole: pass encoder_len=, the (B,) prefix_len given to prefill (zeros for a "
                             "causal read)")
    if encoder_len.shape != (batch_size,):
        raise RecallkitError(f"encoder_len must be ({batch_size},), one per sequence of the state; got "
                             f"{tuple(encoder_len.shape)}")
    return [max(0, min(int(m), prefix_len)) for m in encoder_len.tolist()]


def prefix_state_bytes(path: str | Path) -> int:
    """Bytes on disk of a saved prefix state (header and payload)."""
    return Path(path).stat().st_size


def _join(prefix: str, name: str | int) -> str:
    return f"{prefix}.{name}" if prefix else str(name)


def _flatten(node: Any, prefix: str, tensors: dict[str, Tensor], leaves: dict[str, _Leaf]) -> None:
    """Split a nested state into named tensors and named JSON leaves (names are dotted paths)."""
    if isinstance(node, Tensor):
        tensors[prefix] = node
    elif _is_hf_cache(node):
        _flatten_hf_cache(node, prefix, tensors, leaves)
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for field in dataclasses.fields(node):
            _flatten(getattr(node, field.name), _join(prefix, field.name), tensors, leaves)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _flatten(value, _join(prefix, i), tensors, leaves)
    elif isinstance(node, dict):
        for key, value in node.items():
            _flatten(value, _join(prefix, key), tensors, leaves)
    elif node is None or isinstance(node, (bool, int, float, str)):
        leaves[prefix] = node
    else:
        raise RecallkitError(f"cannot save state entry {prefix!r} of type {type(node).__name__}")


def _rebuild(node: Any, prefix: str, stored: dict[str, Any], used: set[str]) -> Any:
    """Copy of the template ``node`` with every leaf replaced by ``stored[path]``."""
    if _is_hf_cache(node):
        return _fill_hf_cache(node, prefix, stored, used)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        values = {f.name: _rebuild(getattr(node, f.name), _join(prefix, f.name), stored, used)
                  for f in dataclasses.fields(node)}
        fields = dataclasses.fields(node)
        out = dataclasses.replace(node, **{f.name: values[f.name] for f in fields if f.init})
        for field in fields:
            if not field.init:  # replace() cannot set these; frozen dataclasses need object.__setattr__
                object.__setattr__(out, field.name, values[field.name])
        return out
    if isinstance(node, (list, tuple)):
        items = [_rebuild(value, _join(prefix, i), stored, used) for i, value in enumerate(node)]
        return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)  # namedtuple or plain
    if isinstance(node, dict):
        return {key: _rebuild(value, _join(prefix, key), stored, used) for key, value in node.items()}
    if prefix not in stored:
        raise RecallkitError(f"the prefix state file does not fit this model's state layout: no {prefix!r}")
    value = stored[prefix]
    if isinstance(node, Tensor) and (not isinstance(value, Tensor) or value.ndim != node.ndim):
        raise RecallkitError(f"the prefix state file does not fit this model's state layout at {prefix!r}")
    used.add(prefix)
    return value


# transformers cache layers whose whole state is the attributes below (an evicting cache is not)
_HF_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer", "LinearAttentionLayer",
              "LinearAttentionAndFullAttentionLayer", "LinearAttentionAndSlidingWindowAttentionLayer")


# Token counters a transformers cache layer keeps: ``cumulative_length`` (attention; an int) and, from
# transformers 5.25, ``cumulative_length_linear`` (linear-attention layers; a 0-d tensor)
_HF_COUNTERS = ("cumulative_length", "cumulative_length_linear")


def _is_hf_cache(node: Any) -> bool:
    """A transformers ``Cache`` (duck-typed: a ``layers`` list and ``get_seq_length``)."""
    return isinstance(getattr(node, "layers", None), list) and hasattr(node, "get_seq_length")


def _flatten_hf_cache(cache: Any, prefix: str, tensors: dict[str, Tensor], leaves: dict[str, _Leaf]) -> None:
    """Per layer: ``keys``/``values`` (attention), ``conv_states.i``/``recurrent_states.i`` (linear
    attention, SSM), the counters ``cumulative_length`` / ``cumulative_length_linear``,
    ``has_previous_state.i``, ``conv_kernel_size.i``
    and the layer's class name (``kind``, checked against the template on load)."""
    if type(cache).__name__ != "DynamicCache" or getattr(cache, "offloading", False):
        raise RecallkitError(f"cannot save a {type(cache).__name__} (only a plain DynamicCache)")
    for index, layer in enumerate(cache.layers):
        name = _join(_join(prefix, "layers"), index)
        kind = type(layer).__name__
        if kind not in _HF_LAYERS or getattr(layer, "record_past", False):
            raise RecallkitError(f"cannot save cache layer {name!r} of type {kind}")
        leaves[_join(name, "kind")] = kind
        if getattr(layer, "is_initialized", False):
            tensors[_join(name, "keys")], tensors[_join(name, "values")] = layer.keys, layer.values
        for counter in _HF_COUNTERS:
            if hasattr(layer, counter):
                leaves[_join(name, counter)] = int(getattr(layer, counter))
        for i in range(getattr(layer, "number_of_states", 0)):
            if layer.is_conv_states_initialized[i]:
                tensors[_join(name, f"conv_states.{i}")] = layer.conv_states[i]
                leaves[_join(name, f"conv_kernel_size.{i}")] = int(layer.conv_kernel_size[i])
            if layer.is_recurrent_states_initialized[i]:
                tensors[_join(name, f"recurrent_states.{i}")] = layer.recurrent_states[i]
            leaves[_join(name, f"has_previous_state.{i}")] = bool(layer.has_previous_state[i])


def _fill_hf_cache(cache: Any, prefix: str, stored: dict[str, Any], used: set[str]) -> Any:
    """Write the stored layer states into the template ``cache`` (fresh, empty) through each layer's
    own ``lazy_initialization``, as transformers' first update would; returns ``cache``."""

    def take(name: str, kind: type | tuple[type, ...]) -> Any:
        value = stored.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RecallkitError(f"the prefix state file does not fit this model's state layout at {name!r}")
        used.add(name)
        return value

    for index, layer in enumerate(cache.layers):
        name = _join(_join(prefix, "layers"), index)
        if take(_join(name, "kind"), str) != type(layer).__name__:
            raise RecallkitError(f"the prefix state file does not fit this model's state layout at {name!r}")
        if _join(name, "keys") in stored:
            keys, values = take(_join(name, "keys"), Tensor), take(_join(name, "values"), Tensor)
            if keys.ndim != 4 or values.ndim != 4:
                raise RecallkitError(f"the prefix state file does not fit this model's state layout "
                                     f"at {name!r}")
            # two positional args: the attention part of a hybrid layer
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        for i in range(getattr(layer, "number_of_states", 0)):
            if _join(name, f"conv_states.{i}") in stored:
                conv = take(_join(name, f"conv_states.{i}"), Tensor)
                kernel = take(_join(name, f"conv_kernel_size.{i}"), int)
                if conv.ndim < 1 or conv.shape[-1] != kernel:
                    raise RecallkitError(f"the prefix state file does not fit this model's state layout "
                                         f"at {name!r}")
                layer.lazy_initialization(conv_states=conv, state_idx=i, conv_kernel_size=kernel)
                layer.conv_states[i].copy_(conv)
            if _join(name, f"recurrent_states.{i}") in stored:
                recurrent = take(_join(name, f"recurrent_states.{i}"), Tensor)
                layer.lazy_initialization(recurrent_states=recurrent, state_idx=i)
                layer.recurrent_states[i].copy_(recurrent)
            layer.has_previous_state[i] = take(_join(name, f"has_previous_state.{i}"), bool)
        for counter in _HF_COUNTERS:  # after the lazy initialisations, which may move a counter tensor
            if hasattr(layer, counter):
                value = take(_join(name, counter), int)
                current = getattr(layer, counter)
                if isinstance(current, Tensor):
                    current.fill_(value)
                else:
                    setattr(layer, counter, value)
    return cache


def _tokens_hash(ids: Tensor) -> str:
    """sha256 of token ids (B, P) as int64, their shape included."""
    digest = hashlib.sha256()
    _update(digest, "prefix_ids", ids.to(torch.int64))
    return digest.hexdigest()


def _update(digest: Any, name: str, tensor: Tensor) -> None:
    """Feed a tensor's name, dtype, shape and raw bytes into ``digest``."""
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)  # works for bf16 too
    digest.update(raw.numpy())


def _checksum(metadata: dict[str, str], tensors: dict[str, Tensor]) -> str:
    """sha256 over the header entries (but the checksum) and every tensor (sorted by name).

    A flipped byte anywhere in the file is then detected: in the payload, or in the header.
    """
    header = {k: v for k, v in metadata.items() if k != "checksum"}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        _update(digest, name, tensors[name])
    return digest.hexdigest()
