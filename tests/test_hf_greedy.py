"""greedy.generate / greedy_match on a scripted model with a byte-piece tokenizer: the token budget
(max_new_tokens) is honoured exactly, and a greedy answer that writes a character in split bytes is
kept open rather than decided wrong."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
pytest.importorskip("transformers", minversion="5")

import torch

from recallkit.hf.greedy import answer_ids, generate, greedy_match

PIECES = [b"<eos>", b" caf", b"\xc3\xa9", b"\xc3", b"\xa9", b"\n", b" more", b"x", b"Answer:"]
EOS, CAF, E_ACUTE, LEAD, CONT, NEWLINE, MORE, X, CUE = range(len(PIECES))


class PieceTokenizer:
    """Longest-match encoding over PIECES; decoding joins the bytes (split characters become U+FFFD)."""

    eos_token_id = EOS

    def __call__(self, text, add_special_tokens=False):
        data, ids = text.encode(), []
        while data:
            n = max((i for i, p in enumerate(PIECES) if i != EOS and data.startswith(p)),
                    key=lambda i: len(PIECES[i]))
            ids.append(n)
            data = data[len(PIECES[n]):]
        return SimpleNamespace(input_ids=ids)

    def decode(self, ids, skip_special_tokens=True):
        ids = [int(i) for i in ids]
        return b"".join(PIECES[i] for i in ids if not (skip_special_tokens and i == EOS)).decode(
            "utf-8", errors="replace")


class ScriptModel:
    """Greedily writes ``script`` after the prompt; once it has read anything else it writes ``x``."""

    def __init__(self, script):
        self.script, self.tokenizer = script, PieceTokenizer()
        self.hf_config = SimpleNamespace(eos_token_id=EOS)

    def _next(self, read):
        ok = read == self.script[: len(read)]
        return self.script[min(len(read), len(self.script) - 1)] if ok else X

    def _onehot(self, token):
        out = torch.zeros(len(PIECES))
        out[token] = 1.0
        return out

    def start(self):
        """(logits (1, V) after the prompt, a fresh state)."""
        return self._onehot(self._next([]))[None], [[]]

    def prefill(self, ids, prefix_len=None, state=None):
        logits = []
        for row, tokens in zip(state, ids.tolist(), strict=True):
            per = []
            for t in tokens:
                row.append(t)
                per.append(self._onehot(self._next(row)))
            logits.append(torch.stack(per))
        return torch.stack(logits), state

    def step(self, token, state):
        logits, state = self.prefill(token[:, None], state=state)
        return logits[:, -1], state


def exact(text, answer):
    lines = text.strip().splitlines()
    return bool(lines) and lines[0].strip() == answer


def match(model, answer, max_new_tokens):
    logits, _ = model.start()
    return greedy_match(model, logits, lambda: model.start()[1], answer, exact, max_new_tokens)


def test_generate_stops_at_max_new_tokens():
    model = ScriptModel([CAF, MORE, MORE, NEWLINE])
    logits, state = model.start()
    assert generate(model, logits, state, 1) == [" caf"]
    logits, state = model.start()
    assert generate(model, logits, state, 2) == [" caf more"]


def test_greedy_match_when_the_budget_ends_with_the_answer():
    # Generation writes " caf" and stops at the budget (1 token): the answer, scored right, although the
    # model would go on with " more" on the same line given one more token.
    model = ScriptModel([CAF, MORE, NEWLINE])
    assert answer_ids(model, "caf") == [CAF]
    logits, state = model.start()
    text = generate(model, logits, state, 1)[0]
    assert exact(text, "caf")
    assert match(model, "caf", 1) == (True, " caf")
    assert match(model, "caf", 2)[0] is False  # with room for " more" it is wrong


def test_an_answer_written_in_split_bytes_is_not_decided_at_its_first_byte():
    # The answer's tokens are " caf" + "é" (one piece); the model writes "é" as two byte pieces. The
    # text after its first differing token is " caf\ufffd": not settled, the whole answer is right.
    model = ScriptModel([CAF, LEAD, CONT, NEWLINE])
    assert answer_ids(model, "café") == [CAF, E_ACUTE]
    logits, state = model.start()
    assert generate(model, logits, state, 10) == [" café\n"]
    correct, text = match(model, "café", 10)
    assert correct and text.strip() == "café"


def test_an_end_of_sequence_id_listed_only_in_the_config_ends_the_answer():
    model = ScriptModel([CAF, MORE, NEWLINE])
    model.hf_config.eos_token_id = [EOS, MORE]  # e.g. an instruct model's end-of-turn token
    logits, state = model.start()
    assert generate(model, logits, state, 10) == [" caf"]  # stopped at MORE, which is dropped
    assert match(model, "caf", 10) == (True, " caf")


def _llama2_style_tokenizer():
    """A SentencePiece-style BPE as Llama-2's: the normalizer prepends "▁" and writes spaces as "▁",
    so a text's first word carries a space of its own."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    chars = ["<unk>", "▁", "A", "n", "s", "w", "e", "r", ":", "4", "2"]
    merges = [("▁", "▁"), ("▁", "A"), ("▁A", "n"), ("▁An", "s"), ("▁Ans", "w"), ("▁Answ", "e"),
              ("▁Answe", "r")]
    vocab = {token: i for i, token in enumerate(chars + ["".join(m) for m in merges])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")


def test_answer_tokens_are_those_the_model_writes_after_the_cue_with_a_sentencepiece_tokenizer():
    """" 42" alone is "▁▁ 4 2" to such a tokenizer, where the text "Answer: 42" has "▁ 4 2" after the
    cue: the expected tokens never matched a greedy answer, which was then generated token by token."""
    from recallkit.hf.greedy import ANSWER_CUE, rest_of_answer
    from recallkit.text_tasks.base import TextTaskConfig

    assert ANSWER_CUE == TextTaskConfig.answer_cue
    model = SimpleNamespace(tokenizer=_llama2_style_tokenizer())

    def ids(text):
        return model.tokenizer(text, add_special_tokens=False).input_ids

    expected = answer_ids(model, "42")
    assert ids("Answer:") + expected == ids("Answer: 42")  # what greedy decoding after the cue writes
    assert model.tokenizer.convert_ids_to_tokens(expected) == ["▁", "4", "2"]
    known = expected[:2]  # "▁ 4" written: the rest is "2" as it continues the text, not "▁ 2"
    assert ids("Answer:") + known + rest_of_answer(model, known, "42") == ids("Answer: 42")


def test_answer_tokens_of_a_byte_level_bpe_are_the_answer_with_its_space():
    from recallkit.hf.tiny import tiny_tokenizer

    model = SimpleNamespace(tokenizer=tiny_tokenizer())
    for answer in ("42", "apple", "7 river", "blue-green"):
        assert answer_ids(model, answer) == model.tokenizer(" " + answer, add_special_tokens=False).input_ids
