"""Prefix caching for pretrained (transformers) models: save an HFState, load it, continue bit-identically."""

from __future__ import annotations

import json
import os
import struct

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
pytest.importorskip("transformers", minversion="5")

import torch

from recallkit.errors import RecallkitError
from recallkit.hf.load import load_model
from recallkit.inference.prefix_cache import load_prefix_state, save_prefix_state

ARCHS = ("llama", "qwen3_next", "mamba2")  # KV cache; hybrid KV + Gated DeltaNet; Mamba-2 conv + SSM
BATCH, PREFIX, MORE, STEPS = 2, 10, 5, 3


@pytest.fixture(scope="module")
def models():
    return {arch: load_model(f"tiny:{arch}") for arch in ARCHS}


def _ids(model, seed=0):
    length = PREFIX + MORE + STEPS
    return torch.randint(3, model.vocab_size, (BATCH, length), generator=torch.Generator().manual_seed(seed))


def _continue(model, state, ids):
    """Logits of MORE tokens by prefill, then STEPS tokens one by one."""
    logits, state = model.prefill(ids[:, PREFIX:PREFIX + MORE], state=state)
    outputs = [logits]
    for t in range(PREFIX + MORE, ids.shape[1]):
        step_logits, state = model.step(ids[:, t], state)
        outputs.append(step_logits[:, None])
    return torch.cat(outputs, dim=1), state


def _saved(model, path):
    ids = _ids(model)
    with torch.no_grad():
        _, state = model.prefill(ids[:, :PREFIX])
    save_prefix_state(model, state, path)
    return ids, state


def _one_line_error(model, path) -> str:
    with pytest.raises(RecallkitError) as error:
        load_prefix_state(model, path)
    message = str(error.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize("arch", ARCHS)
def test_load_and_continue_is_bit_identical(models, arch, tmp_path):
    model = models[arch]
    path = tmp_path / "prefix.safetensors"
    ids, state = _saved(model, path)
    loaded, prefix_len = load_prefix_state(model, path)
    assert prefix_len == PREFIX and loaded.position == PREFIX
    assert loaded.cache is not state.cache
    if model.has_attention:
        assert loaded.cache.get_seq_length() == state.cache.get_seq_length() == PREFIX
    with torch.no_grad():
        expected, expected_state = _continue(model, state.copy(), ids)
        got, got_state = _continue(model, loaded, ids)
    assert torch.equal(got, expected)
    assert got_state.position == expected_state.position == ids.shape[1]


def test_file_names_layers_and_position(models, tmp_path):
    from safetensors import safe_open

    path = tmp_path / "prefix.safetensors"
    _saved(models["qwen3_next"], path)
    with safe_open(path, framework="pt") as file:
        names, leaves = set(file.keys()), json.loads(file.metadata()["leaves"])
    assert {"cache.layers.0.conv_states.0", "cache.layers.0.recurrent_states.0",
            "cache.layers.1.keys", "cache.layers.1.values"} <= names
    assert leaves["position"] == PREFIX
    assert leaves["cache.layers.0.kind"] == "LinearAttentionLayer"


@pytest.mark.parametrize("arch", ARCHS)
def test_refuses_another_model(models, arch, tmp_path):
    path = tmp_path / "prefix.safetensors"
    _saved(models[arch], path)
    for other in ARCHS:
        if other != arch:
            assert "another model" in _one_line_error(models[other], path)
    assert "another model" in _one_line_error(load_model(f"tiny:{arch}", seed=1), path)


def test_refuses_a_corrupt_file(models, tmp_path):
    model = models["qwen3_next"]
    path = tmp_path / "prefix.safetensors"
    _saved(model, path)
    raw = path.read_bytes()
    body = 8 + struct.unpack("<Q", raw[:8])[0]
    flipped = bytearray(raw)
    flipped[body + (len(raw) - body) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    assert "checksum" in _one_line_error(model, path)
    path.write_bytes(raw[:-5])
    assert "truncated or corrupt" in _one_line_error(model, path)
