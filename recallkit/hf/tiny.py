"""Tiny, randomly initialised Hugging Face models and a matching tokenizer, built offline.

Each tiny architecture (:data:`~recallkit.sources.TINY_ARCHS`) stands for one family of inference
state: a growing KV cache (``llama`` with grouped-query attention, ``gpt_neox``), a sliding-window
KV cache (``mistral``, a
window of 8 tokens, which its attention modules pass as an argument rather than hold), a fixed SSM
state (``mamba``, ``mamba2``) and hybrids that hold both (``qwen3_next``: Gated DeltaNet + attention
layers; ``lfm2``: short-conv + attention layers; ``falcon_h1``: Mamba-2 and attention side by side in
every layer). The configs are
small enough (vocab 512, width 64, 2-4 layers) that a forward pass takes milliseconds on a CPU, yet
every state tensor the full-size model keeps is present, so state sizes and cache behaviour can be
tested without downloading anything. The fused kernels (mamba_ssm, causal_conv1d, fla) are not
needed: transformers falls back to its pure-PyTorch reference path when they are not installed.
"""

from __future__ import annotations

from typing import Any

import torch

from recallkit.errors import RecallkitError
from recallkit.sources import unknown_tiny


TINY_VOCAB = 512
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2

# Words that recall prompts use as keys and values: each, with a leading space, becomes one token.
_WORDS = (
    "apple banana cherry grape lemon mango orange peach pear plum river lake ocean sea mountain hill "
    "valley forest desert island city town village road bridge house door window table chair book paper "
    "pen cat dog bird fish horse cow lion tiger bear wolf red blue green yellow black white brown key "
    "value query answer name the a is of and to in it was that with for on as at by from this be are or"
).split()
# Running English text: supplies the remaining merges so that the vocabulary fills up to TINY_VOCAB.
_TEXT = (
    "The quick brown fox jumps over the lazy dog. A key and its value: the apple is red, the river is long.\n"
    "Alice went to the market in the city with her dog and bought an apple, a pear and three lemons.\n"
    "Every morning the farmer walked along the river to the old mill, where the water turned the great\n"
    "wheel and the miller ground wheat into flour for the bakers of the town. Children played near the\n"
    "bridge, counting boats: one, two, three, four, five, six, seven, eight, nine, ten. In winter the\n"
    "lake froze and people skated."
)

_SHARED = dict(
    vocab_size=TINY_VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)
_GQA = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # 4 query, 2 KV heads
_BODY = dict(hidden_size=64, intermediate_size=128)
_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(**_BODY, **_GQA, num_hidden_layers=2, head_dim=16),
    "mistral": dict(**_BODY, **_GQA, num_hidden_layers=2, head_dim=16, sliding_window=8),
    "gpt_neox": dict(**_BODY, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512),
    "mamba": dict(hidden_size=64, state_size=8, expand=2, conv_kernel=4, num_hidden_layers=2),
    # Mamba-2 needs hidden_size * expand == num_heads * head_dim and n_groups | num_heads; chunk_size 16
    # makes a 33-token prefill cross chunk boundaries.
    "mamba2": dict(
        hidden_size=64, expand=2, num_heads=8, head_dim=16, state_size=16, n_groups=2, conv_kernel=4,
        chunk_size=16, num_hidden_layers=2,
    ),
    "qwen3_next": dict(
        **_BODY, **_GQA, head_dim=16, num_hidden_layers=4,
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
    ),
    "lfm2": dict(
        **_BODY, **_GQA, num_hidden_layers=4, conv_L_cache=3, block_auto_adjust_ff_dim=False,
        layer_types=["conv", "full_attention", "conv", "full_attention"],
    ),
    # Mamba-2 half: d_inner = mamba_expand * hidden_size = 128 = mamba_n_heads * mamba_d_head.
    "falcon_h1": dict(
        **_BODY, **_GQA, num_hidden_layers=2, mamba_d_ssm=None, mamba_n_heads=8, mamba_d_head=16,
        mamba_n_groups=1, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=16,
    ),
}


def _check_arch(arch: str) -> None:
    if (reason := unknown_tiny(arch)) is not None:
        raise RecallkitError(reason)


def tiny_config(arch: str):
    """A small ``transformers`` config for ``arch`` (one of :data:`TINY_ARCHS`), float32, vocab 512."""
    from transformers import AutoConfig

    _check_arch(arch)
    config = AutoConfig.for_model(arch, **_SHARED, **_CONFIGS[arch])
    config.dtype = torch.float32
    return config


def build_tiny_model(arch: str, seed: int = 0):
    """``(model, tokenizer)``: a randomly initialised float32 causal LM in eval mode, and the tokenizer.

    The weights depend only on ``arch`` and ``seed``: initialisation runs under ``torch.random.fork_rng``
    after ``torch.manual_seed(seed)``, so the caller's global RNG stream is left exactly as it was.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.float().eval(), tiny_tokenizer()


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def corpus():
        for _ in range(20):
            yield " ".join(_WORDS)
            yield " " + " ".join(str(d) for d in range(10))
        yield _TEXT

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=list(SPECIAL_TOKENS), min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer)
    size = tokenizer.get_vocab_size()
    if size != TINY_VOCAB:
        raise RecallkitError(f"tiny tokenizer has {size} tokens, expected {TINY_VOCAB}")
    return tokenizer


def tiny_tokenizer():
    """A byte-level BPE ``PreTrainedTokenizerFast`` of exactly 512 tokens, trained offline, deterministically.

    Byte-level, so any text round-trips through encode/decode. Trained on an embedded word list
    (fruits, animals, places, colours, ``key``/``value``, digits) and a short English paragraph: every
    listed word preceded by a space (`` apple``, `` river``, `` 7``) is a single token, and so is every
    single digit. ``<pad>``, ``<bos>``, ``<eos>`` are ids 0, 1, 2, matching :func:`tiny_config`; encoding
    adds none of them (prepend ``bos_token_id`` yourself when wanted). BPE training in ``tokenizers``
    breaks count ties by the pair itself, so the ids are the same on every build and in every process.
    """
    from transformers import PreTrainedTokenizerFast

    pad, bos, eos = SPECIAL_TOKENS
    tokenizer = _train_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos)
