"""HFModel behind recallkit's model contract: the checker on every tiny architecture (and failing without
the Mamba workaround), state sizes against the real cache, independent state copies, `check-model`,
lazy imports, and task tokens mapped onto real words."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
pytest.importorskip("transformers", minversion="5")

import torch
from typer.testing import CliRunner

import recallkit as rk
from recallkit.cli import app
from recallkit.config import PretrainedRunConfig
from recallkit.contract import check_model
from recallkit.errors import RecallkitError
from recallkit.hf import TINY_ARCHS, HFModel, load_model
from recallkit.hf.cache_state import layer_tensors, cache_numel, cache_numel_parts
from recallkit.hf.token_map import map_batch, ordinary_words, token_map
from recallkit.sweep import run_sweep
from recallkit.tasks.base import IGNORE_INDEX, Batch
from tests.conftest import tiny_run
from recallkit.hf.tiny import tiny_tokenizer

runner = CliRunner()
_CHECK_LINE = re.compile(r"^\s*(ok|FAIL)\s+(\S.*?)\s+max \|diff\| ")


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


@pytest.fixture(scope="module")
def models() -> dict[str, HFModel]:
    return {arch: load_model(f"tiny:{arch}") for arch in TINY_ARCHS}


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_check_model_passes_on_every_tiny_arch(models, arch):
    checks = check_model(models[arch])
    names = [c.name for c in checks]
    assert {"prefill", "state size", "step loop", "batch independence"} <= set(names)
    assert sum(name.startswith("split at ") for name in names) >= 3
    assert [c.line() for c in checks if not c.passed] == []


def test_checker_fails_without_the_mamba_restart_workaround(models, monkeypatch):
    """transformers 5.24's Mamba-1 multi-token scan restarts from a zero SSM state: a split prefill is
    wrong unless the adapter reads the continuation token by token. The checker must catch it."""
    monkeypatch.setattr("recallkit.hf.adapter.RESTARTS_FROM_ZERO", ())
    checks = {c.name: c for c in check_model(models["mamba"])}
    failed = [name for name, c in checks.items() if not c.passed]
    assert failed and all(name.startswith("split at ") for name in failed)
    assert checks["prefill"].passed and checks["step loop"].passed


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_state_size_is_the_real_cache_numel_and_kv_state_size_its_attention_part(models, arch):
    model = models[arch]
    for length in (1, 6, 19):
        with torch.no_grad():
            _, state = model.prefill(_ids(2, length, seed=length))
        assert state.position == length
        assert model.state_size(length) == cache_numel(state.cache)
        assert model.kv_state_size(length) == cache_numel_parts(state.cache)["kv"]
    has_kv = arch not in ("mamba", "mamba2")
    assert (model.kv_state_size(19) > model.kv_state_size(6)) == has_kv


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_a_prefilled_state_owns_its_storage(models, arch):
    """No cache tensor views a larger block (Mistral's sliding layer kept a slice of all the
    prompt's keys: 224 numbers held in a storage of 6,400 after 200 tokens)."""
    with torch.no_grad():
        _, state = models[arch].prefill(_ids(2, 40, seed=4))
    for layer in state.cache.layers:
        for name, t in layer_tensors(layer):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), name


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_state_copy_continues_independently(models, arch):
    model, ids = models[arch], _ids(2, 14, seed=3)
    head, first, second = ids[:, :8], ids[:, 8:], ids.flip(1)[:, :6]
    with torch.no_grad():
        _, state = model.prefill(head)
        copied = state.copy()
        numel = cache_numel(state.cache)
        from_copy, after_copy = model.prefill(second, state=copied)
        assert cache_numel(state.cache) == numel and state.position == 8  # the original is untouched
        from_original, _ = model.prefill(first, state=state)
        fresh_first, _ = model.prefill(first, state=model.prefill(head)[1])  # as if no copy existed
        fresh_second, _ = model.prefill(second, state=model.prefill(head)[1])
    assert after_copy.position == 14
    torch.testing.assert_close(from_original, fresh_first, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_copy, fresh_second, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(from_original[:, -1], from_copy[:, -1])


def _check_lines(output: str) -> list[str]:
    return [m.group(2) for line in output.splitlines() if (m := _CHECK_LINE.match(line))]


def test_check_model_cli_prints_one_line_per_check_and_exits_0(models):
    result = runner.invoke(app, ["check-model", "tiny:llama"])
    assert result.exit_code == 0, result.output
    expected = [c.name for c in check_model(models["llama"])]
    assert _check_lines(result.stdout) == expected
    assert "tiny:llama" in result.stdout.splitlines()[0]


def _snapshot(directory):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_check_model_on_a_results_directory(tmp_path):
    """Each run's architecture is checked; its runs have learned positions (max_position=16), so the
    check reads at most 16 tokens; nothing in the directory is written."""
    out = tmp_path / "results"
    rows = run_sweep([tiny_run(max_steps=2, eval_every=2)], out, quiet=True)
    assert [r["status"] for r in rows] == ["done"]
    before = _snapshot(out)
    result = runner.invoke(app, ["check-model", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    names = _check_lines(result.stdout)
    assert len(names) >= 9 and names[:2] == ["prefill", "step loop"]
    assert {"causality", "state size"} <= set(names) and any(n.startswith("steps after") for n in names)
    assert all(line.lstrip().startswith("ok") for line in result.stdout.splitlines()[1:])
    assert _snapshot(out) == before


def test_check_model_on_a_results_directory_with_a_pretrained_run(tmp_path):
    """The demo's directory holds an evaluation of a pretrained model beside trained runs: its model is
    loaded from its source and checked too (its row is no training config)."""
    out = tmp_path / "results"
    pretrained = PretrainedRunConfig(model={"pretrained": "tiny:llama"}, task={"name": "phonebook_text",
                                                                               "num_entries": 3},
                                     num_examples=2)
    rows = run_sweep([tiny_run(max_steps=2, eval_every=2), pretrained], out, quiet=True)
    assert [r["status"] for r in rows] == ["done", "done"]
    result = runner.invoke(app, ["check-model", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    headers = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert len(headers) == 2 and headers[-1].startswith("tiny:llama")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_passes_within_its_rounding_and_a_broken_one_still_fails(dtype):
    """check-model held bfloat16 / float16 runs to float32's 1e-4: every half-precision model failed
    on rounding alone. A step that ignores its state must still fail there."""
    model = load_model("tiny:llama", dtype=dtype)
    assert [c.line() for c in check_model(model) if not c.passed] == []
    step = model.step

    def forgetful(token, state):  # the next token read as if it began the sequence
        logits, state = step(token, state)
        return model.prefill(token[:, None])[0][:, -1], state

    model.step = forgetful
    assert {"step loop"} <= {c.name for c in check_model(model) if not c.passed}


def test_check_model_on_a_results_directory_checks_every_model_that_loads(tmp_path):
    """Half-precision runs are checked at their dtype's rounding, and a run whose model no longer loads
    (its directory deleted) is one FAIL line: the other models are still checked."""
    model, tokenizer = load_model("tiny:llama").model, tiny_tokenizer()
    gone = tmp_path / "gone"
    model.save_pretrained(gone)
    tokenizer.save_pretrained(gone)
    task = {"name": "phonebook_text", "num_entries": 3}
    runs = [PretrainedRunConfig(model={"pretrained": source, "dtype": dtype}, task=task, num_examples=2)
            for source, dtype in ((str(gone), "float32"), ("tiny:llama", "bfloat16"),
                                  ("tiny:mamba2", "float16"))]
    out = tmp_path / "results"
    assert [r["status"] for r in run_sweep(runs, out, quiet=True)] == ["done"] * 3
    for path in gone.iterdir():
        path.unlink()
    gone.rmdir()
    result = runner.invoke(app, ["check-model", str(out)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.lstrip().startswith("FAIL")]
    assert len(failed) == 1 and failed[0].split()[1] == "load" and str(gone) in "".join(lines)
    headers = [line for line in lines if not line.startswith(" ")]
    assert headers[1:] == ["tiny:llama (bfloat16)", "tiny:mamba2 (float16)"]
    assert len(_check_lines(result.stdout)) >= 18  # both half-precision models checked, every check ok


def test_importing_recallkit_does_not_import_transformers():
    code = ("import sys, recallkit, recallkit.report, recallkit.contract; "
            "print(sorted(m for m in ('transformers', 'recallkit.hf') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_token_map_picks_distinct_round_tripping_words_per_seed(models):
    tokenizer = models["llama"].tokenizer
    mapping = token_map(tokenizer, 40, seed=0)
    ids = mapping.tolist()
    assert mapping.dtype == torch.long and len(ids) == 40 == len(set(ids))
    for token_id in ids:
        text = tokenizer.decode([token_id])
        assert re.fullmatch(r" [A-Za-z]{3,12}", text), text
        assert tokenizer.encode(text, add_special_tokens=False) == [token_id]
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert torch.equal(token_map(tokenizer, 40, seed=0), mapping)
    assert not torch.equal(token_map(tokenizer, 40, seed=1), mapping)
    words = sum(bool(re.fullmatch(r" [A-Za-z]{3,12}", tokenizer.decode([i]))) for i in range(len(tokenizer)))
    assert len(token_map(tokenizer, words, seed=2).unique()) == words  # every ordinary word, once
    for too_many in (words + 1, len(tokenizer)):
        with pytest.raises(RecallkitError, match="vocab_size") as error:
            token_map(tokenizer, too_many)
        assert "\n" not in str(error.value)


def test_token_map_finds_the_words_of_a_sentencepiece_tokenizer():
    """Llama-2 / Mistral tokenizers store ``▁word`` and strip the space of a token decoded alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = "apple banana cherry river lake ocean mountain forest desert island city town road".split()
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    raw.decoder = decoders.Sequence([  # Llama-2's decoder chain
        decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    raw.train_from_iterator([" ".join(words)] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    assert tokenizer.decode([tokenizer.convert_tokens_to_ids("\u2581river")]) == "river"  # no space alone
    found = {tokenizer.convert_ids_to_tokens(i) for i in ordinary_words(tokenizer)}
    assert found == {piece for piece in tokenizer.get_vocab() if re.fullmatch("\u2581[A-Za-z]{3,12}", piece)}
    assert {"\u2581" + word for word in words} <= found
    assert len(token_map(tokenizer, len(words)).unique()) == len(words)


def test_map_batch_maps_inputs_and_labels_and_keeps_ignored():
    mapping = torch.tensor([100, 205, 317, 42, 9])
    inputs = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]])
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX, 4], [0, IGNORE_INDEX, IGNORE_INDEX, 3]])
    batch = Batch(inputs, labels, torch.tensor([2, 3]), {"pairs": torch.tensor([1, 2])})
    mapped = map_batch(batch, mapping)
    assert mapped.inputs.tolist() == [[100, 205, 317, 42], [9, 42, 317, 205]]
    ignored = IGNORE_INDEX
    assert mapped.labels.tolist() == [[ignored, 317, ignored, 9], [100, ignored, ignored, 42]]
    assert torch.equal(mapped.prefix_len, batch.prefix_len)
    assert torch.equal(mapped.slices["pairs"], torch.tensor([1, 2]))
    assert batch.inputs.tolist()[0] == [0, 1, 2, 3]  # the original batch is unchanged


def test_evaluate_a_mapped_task_on_a_pretrained_model(models):
    model = models["llama"]
    batch = rk.make_task("mqar", vocab_size=48, seq_len=24, num_kv_pairs=3).generate(6, seed=0)
    mapping = token_map(model.tokenizer, 48, seed=0)
    mapped = map_batch(batch, mapping)
    scored = batch.labels != IGNORE_INDEX
    assert set(mapped.labels[scored].tolist()) <= set(mapping.tolist())
    plain = rk.evaluate(model, mapped)
    assert 0.0 <= plain["accuracy"] <= 1.0 and plain["num_examples"] == 6
    evicted = rk.evaluate(model, mapped, policy="window", budget=0.5, mode="prefill")
    assert 0.0 <= evicted["accuracy"] <= 1.0 and evicted["num_examples"] == 6
    assert evicted["policy"] == "window" and evicted["mode"] == "prefill" and evicted["budget"] == 0.5
    full = rk.evaluate(model, mapped, policy="full", budget=1.0)
    assert full["accuracy"] == plain["accuracy"]
    assert 0 < evicted["state_size"] < full["state_size"] == model.state_size(24)


def test_a_special_token_that_reads_as_a_word_is_not_ordinary():
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [" zebra"]})
    special = tokenizer.convert_tokens_to_ids(" zebra")
    assert special in tokenizer.all_special_ids and tokenizer.decode([special]) == " zebra"
    words = ordinary_words(tokenizer)
    assert special not in words and words  # the ordinary words are still found
