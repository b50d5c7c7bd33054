"""Prefix state cache: save after a prefix, load, continue bit-identically; refuse foreign/corrupt files."""

from __future__ import annotations

import struct

import pytest
import torch

import recallkit as rk
from recallkit.errors import RecallkitError
from recallkit.inference.prefix_cache import (
    load_prefix_state,
    model_fingerprint,
    prefix_state_bytes,
    save_prefix_state,
)
from tests.cases import CASES

VOCAB, T, PREFIX, BATCH, STEPS = 32, 24, 13, 2, 4

# The first contract case of every registry key, a short-conv wrapper and a hybrid schedule.
FIRST = {key: kwargs for key, kwargs in reversed(CASES)}
MODELS: list[tuple[str, dict | list[dict]]] = [(key, {"name": key, **kw}) for key, kw in FIRST.items()]
MODELS += [
    ("attention+conv", {"name": "attention", "num_heads": 2, "position": "rope", "short_conv": 4}),
    ("hybrid", [{"name": "mamba2", "chunk_size": 8}, {"name": "attention", "num_heads": 2, "window": 7}]),
]


def build(mixer: dict | list[dict], seed: int = 0, num_layers: int = 2) -> rk.LanguageModel:
    torch.manual_seed(seed)
    config = rk.ModelConfig(vocab_size=VOCAB, d_model=16, num_layers=num_layers, mixer=mixer)
    return rk.build_model(config).eval()


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, T), generator=torch.Generator().manual_seed(seed))


def header_len(path) -> int:
    """Bytes before the tensor payload: the u64 header size and the JSON header."""
    return 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


def saved(tmp_path, mixer=None, prefix: int = PREFIX):
    model = build(mixer or {"name": "attention", "num_heads": 2})
    with torch.no_grad():
        _, state = model.prefill(tokens()[:, :prefix])
    return model, save_prefix_state(model, state, tmp_path / "prefix.safetensors", prefix)


def test_every_registry_key_is_covered():
    assert set(FIRST) == set(rk.MIXERS)


@pytest.mark.parametrize(("label", "mixer"), MODELS, ids=[label for label, _ in MODELS])
def test_load_and_continue_is_bit_identical(tmp_path, label, mixer):
    model, ids = build(mixer), tokens()
    head, rest = ids[:, :PREFIX], ids[:, PREFIX:]
    whole = torch.full((BATCH,), PREFIX) if model.prefix_aware else None  # PLA reads its prefix whole
    with torch.no_grad():
        _, state = model.prefill(head, whole)
        path = save_prefix_state(model, state, tmp_path / f"{label}.safetensors", PREFIX, encoder_len=whole)
        loaded, prefix_len = load_prefix_state(model, path, encoder_len=whole)
        assert prefix_len == PREFIX and loaded.position == PREFIX
        # prefill the rest: from the loaded state == from a freshly computed in-memory state
        expected, _ = model.prefill(rest, state=model.prefill(head, whole)[1])
        assert torch.equal(model.prefill(rest, state=loaded)[0], expected)
        full, _ = model.prefill(ids, whole)  # and recomputation of the whole sequence agrees
        torch.testing.assert_close(expected, full[:, PREFIX:], atol=2e-5, rtol=1e-4)
        # step a few tokens from both states (a few: DeltaNet's step is slow on CPU)
        memory, disk = model.prefill(head, whole)[1], load_prefix_state(model, path, encoder_len=whole)[0]
        for t in range(STEPS):
            want, memory = model.step(rest[:, t], memory)
            got, disk = model.step(rest[:, t], disk)
            assert torch.equal(got, want), f"token {PREFIX + t}"


def test_payload_is_the_state_size(tmp_path):
    for mixer in ({"name": "attention", "num_heads": 2}, {"name": "mamba2", "chunk_size": 8}):
        model, path = saved(tmp_path, mixer)
        payload = prefix_state_bytes(path) - header_len(path)
        assert payload == BATCH * model.state_size(PREFIX) * 4  # fp32 numbers (DESIGN.md rule 4)


def test_attention_file_grows_with_the_prefix_recurrent_does_not(tmp_path):
    sizes = {}
    mixers = {
        "attention": {"name": "attention", "num_heads": 2},
        "linear_attention": {"name": "linear_attention", "feature_map": "elu", "chunk_size": 8},
        "mamba2": {"name": "mamba2", "chunk_size": 8},
    }
    for name, mixer in mixers.items():
        for prefix in (10, 20):
            sizes[name, prefix] = prefix_state_bytes(saved(tmp_path / f"{name}{prefix}", mixer, prefix)[1])
    # attention: 2 layers x 2 (k, v) x 16 numbers x 4 bytes x batch 2 more per token
    assert sizes["attention", 20] - sizes["attention", 10] == 10 * 2 * 2 * 16 * 4 * BATCH
    assert sizes["linear_attention", 20] == sizes["linear_attention", 10]
    assert sizes["mamba2", 20] == sizes["mamba2", 10]


def one_line_error(model, path) -> str:
    with pytest.raises(RecallkitError) as error:
        load_prefix_state(model, path)
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_refuses_a_file_from_another_model(tmp_path):
    model, path = saved(tmp_path)
    other_seed = build({"name": "attention", "num_heads": 2}, seed=1)
    assert model_fingerprint(other_seed) != model_fingerprint(model)
    assert "another model" in one_line_error(other_seed, path)
    assert "another model" in one_line_error(build({"name": "gla", "chunk_size": 8}), path)
    retrained = build({"name": "attention", "num_heads": 2})
    with torch.no_grad():
        retrained.embed.weight[0, 0] += 1e-3
    assert "another model" in one_line_error(retrained, path)


def test_refuses_corrupt_truncated_and_missing_files(tmp_path):
    model, path = saved(tmp_path)
    raw = path.read_bytes()
    body = header_len(path)
    flipped = bytearray(raw)
    flipped[body + (len(raw) - body) // 2] ^= 0x01  # one bit in the middle of the tensor payload
    path.write_bytes(bytes(flipped))
    assert "checksum" in one_line_error(model, path)
    path.write_bytes(raw[:-5])
    assert "truncated or corrupt" in one_line_error(model, path)
    path.write_bytes(raw[:4])
    one_line_error(model, path)
    assert "not found" in one_line_error(model, tmp_path / "nowhere.safetensors")


def test_every_flipped_header_byte_is_refused(tmp_path):
    model, path = saved(tmp_path, prefix=3)
    raw = path.read_bytes()
    for i in range(header_len(path)):
        flipped = bytearray(raw)
        flipped[i] ^= 0xFF
        path.write_bytes(bytes(flipped))
        one_line_error(model, path)


def test_refuses_prefix_len_that_is_not_the_state_position(tmp_path):
    model = build({"name": "mamba2", "chunk_size": 8})
    with torch.no_grad():
        _, state = model.prefill(tokens()[:, :PREFIX])
    with pytest.raises(RecallkitError, match="prefix_len=5"):
        save_prefix_state(model, state, tmp_path / "x.safetensors", 5)


def test_a_file_saved_with_its_prefix_tokens_refuses_other_tokens(tmp_path):
    model = build({"name": "mamba2", "chunk_size": 8})
    ids = tokens()[:, :PREFIX]
    with torch.no_grad():
        _, state = model.prefill(ids)
    path = save_prefix_state(model, state, tmp_path / "keyed.safetensors", prefix_ids=ids)
    loaded, prefix_len = load_prefix_state(model, path, prefix_ids=ids.clone())
    assert prefix_len == PREFIX
    assert load_prefix_state(model, path)[1] == PREFIX  # naming the tokens stays optional
    other = ids.clone()
    other[1, 4] = (other[1, 4] + 1) % VOCAB
    with pytest.raises(RecallkitError, match="holds the state of other prefix tokens"):
        load_prefix_state(model, path, prefix_ids=other)
    unkeyed = save_prefix_state(model, state, tmp_path / "unkeyed.safetensors")
    with pytest.raises(RecallkitError, match="no record of its prefix tokens"):
        load_prefix_state(model, unkeyed, prefix_ids=ids)
    with pytest.raises(RecallkitError, match=r"are not \(batch, 13\) tokens"):
        save_prefix_state(model, state, tmp_path / "bad.safetensors", prefix_ids=ids[:, :5])


def test_every_changed_prefix_token_is_refused(tmp_path):
    torch.manual_seed(0)
    config = rk.ModelConfig(vocab_size=VOCAB, d_model=16, num_layers=1,
                            mixer={"name": "mamba2", "chunk_size": 8})
    model = rk.build_model(config).eval()
    ids = torch.randint(0, VOCAB, (2, PREFIX), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, state = model.prefill(ids)
    path = save_prefix_state(model, state, tmp_path / "keyed.safetensors", prefix_ids=ids)
    assert load_prefix_state(model, path, prefix_ids=ids.clone())[1] == PREFIX
    for row in range(2):
        for t in (0, PREFIX - 1):
            other = ids.clone()
            other[row, t] = (other[row, t] + 1) % VOCAB
            with pytest.raises(RecallkitError, match="other prefix tokens"):
                load_prefix_state(model, path, prefix_ids=other)


def test_a_prefix_aware_state_is_keyed_by_the_tokens_its_prefill_read_whole(tmp_path):
    """PLA's state after 8 tokens differs with the encoder's M (tokens read non-causally): a file saved
    after reading 4 of them whole loaded silently for a caller who meant all 8 (logits off by 0.06)."""
    model, ids = build({"name": "pla", "feature_dim": 4, "num_heads": 2}), tokens()
    head, rest = ids[:, :8], ids[:, 8:]
    four, eight = torch.tensor([4, 4]), torch.tensor([8, 30])  # M beyond the tokens read is all of them
    with torch.no_grad():
        path = save_prefix_state(model, model.prefill(head, four)[1], tmp_path / "m4.safetensors",
                                 encoder_len=four)
        with pytest.raises(RecallkitError, match=r"reading \[4, 4\] prefix tokens whole.*not \[8, 8\]"):
            load_prefix_state(model, path, encoder_len=eight)
        with pytest.raises(RecallkitError, match="pass encoder_len="):
            load_prefix_state(model, path)
        with pytest.raises(RecallkitError, match="pass encoder_len="):
            save_prefix_state(model, model.prefill(head)[1], tmp_path / "causal.safetensors")
        causal = save_prefix_state(model, model.prefill(head)[1], tmp_path / "causal.safetensors",
                                   encoder_len=torch.zeros(2, dtype=torch.long))
        with pytest.raises(RecallkitError, match="encoder_len"):
            load_prefix_state(model, causal, encoder_len=eight)
        loaded = load_prefix_state(model, path, encoder_len=four.clone())[0]
        torch.testing.assert_close(model.prefill(rest, state=loaded)[0], model(ids, four)[:, 8:],
                                   atol=2e-5, rtol=1e-4)
        with pytest.raises(RecallkitError, match=r"encoder_len must be \(2,\)"):
            load_prefix_state(model, path, encoder_len=torch.tensor([4]))


def test_prefix_ids_of_another_batch_are_refused(tmp_path):
    """Two sequences' state saved under one sequence's tokens loaded for that one, with the other's
    row first."""
    model, ids = build({"name": "attention", "num_heads": 2}), tokens()[:, :8]
    with torch.no_grad():
        state = model.prefill(ids)[1]
    with pytest.raises(RecallkitError, match="name 1 sequences, the state holds 2"):
        save_prefix_state(model, state, tmp_path / "x.safetensors", prefix_ids=ids[1:2])


def test_a_prefix_aware_file_without_encoder_len_says_it_predates_it(tmp_path):
    """A PLA file saved before encoder_len was recorded read "after reading None prefix tokens whole"."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from recallkit.inference.prefix_cache import _checksum

    model, ids = build({"name": "pla", "feature_dim": 4, "num_heads": 2}), tokens()[:, :8]
    whole = torch.tensor([8, 8])
    with torch.no_grad():
        path = save_prefix_state(model, model.prefill(ids, whole)[1], tmp_path / "new.safetensors",
                                 encoder_len=whole)
    with safe_open(path, framework="pt") as file:  # the same file as the earlier format wrote it
        metadata = {k: v for k, v in file.metadata().items() if k != "encoder_len"}
        tensors = {name: file.get_tensor(name) for name in file.keys()}
    metadata["checksum"] = _checksum(metadata, tensors)
    save_file(tensors, tmp_path / "old.safetensors", metadata=metadata)
    with pytest.raises(RecallkitError, match="saved before encoder_len was recorded"):
        load_prefix_state(model, tmp_path / "old.safetensors", encoder_len=whole)
