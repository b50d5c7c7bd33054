"""The contract checker (`recallkit check-model`) passes a model that keeps the contract and catches
each way a hand-broken one breaks it."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from recallkit.contract import check_model

V = 11


@dataclass
class State:
    layers: list[torch.Tensor]
    position: int


class Bigram(nn.Module):
    """logits_t = A[x_t] + B[x_{t-1}]: its state is the last token (one number per sequence). ``bug``
    breaks it one way; a prefix-aware variant adds P[x_{M-1}] to every prefix position t < M - 1
    (a non-causal prefix read, as PLA's)."""

    def __init__(self, bug: str | None = None, prefix_aware: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Embedding(V, 1)
        self.A, self.B, self.P, self.C = (nn.Parameter(torch.randn(V, V, generator=g)) for _ in range(4))
        self.bug, self.prefix_aware, self.config = bug, prefix_aware, SimpleNamespace(max_position=0)

    def _logits(self, x: torch.Tensor, prev: torch.Tensor, start: int, prefix: torch.Tensor | None):
        previous = torch.cat([prev[:, None], x[:, :-1]], 1)
        out = self.A[x] + torch.where(previous[..., None] >= 0, self.B[previous.clamp(min=0)], 0.0)
        if self.bug == "peek":  # reads the next token
            out = out + self.C[torch.cat([x[:, 1:], x[:, -1:]], 1)]
        if prefix is not None and start == 0:  # the first prefill holds the whole prefix
            t = torch.arange(x.shape[1])[None]
            last = prefix + (1 if self.bug == "prefix_peek" else 0) - 1  # prefix_peek reads x_M
            read = self.P[x.gather(1, last[:, None].clamp(max=x.shape[1] - 1))]  # (B, 1, V)
            out = out + torch.where((t < prefix[:, None] - 1)[..., None], read, 0.0)
        return out

    def forward(self, x, prefix_len=None):
        return self._logits(x, torch.full((x.shape[0],), -1), 0, prefix_len)

    def prefill(self, x, prefix_len=None, state=None):
        start = 0 if state is None else state.position
        if self.bug == "newest_first":  # prefill keeps every token newest first and reads slot 0
            prev = torch.full((x.shape[0],), -1) if state is None else state.layers[0][:, 0].long()
            held = x.flip(1).float() if state is None else torch.cat([x.flip(1).float(), state.layers[0]], 1)
            return self._logits(x, prev, start, prefix_len), State([held], start + x.shape[1])
        prev = torch.full((x.shape[0],), -1) if state is None else state.layers[0][:, -1].long()
        layers = [x[:, -1:].float()]
        if self.bug == "shared_counter":
            layers.append(torch.zeros(()))
        return self._logits(x, prev, start, prefix_len), State(layers, start + x.shape[1])

    def step(self, token, state):
        prev = state.layers[0][:, -1].long()  # the newest token, last
        if self.bug == "ignores_state":
            prev = torch.full_like(prev, -1)
        logits = self._logits(token[:, None], prev, state.position, None)[:, 0]
        keeps_all = self.bug in ("newest_first", "never_trims")
        held = token[:, None].float()
        held = torch.cat([state.layers[0], held], 1) if keeps_all else held
        return logits, State([held], state.position + 1)

    def state_size(self, seq_len: int) -> int:
        if self.bug == "newest_first":
            return seq_len
        wrong = self.bug == "off_by_one" or (self.bug == "miscounts_short" and seq_len < 3)
        return 2 if wrong else 1


def failed(model: Bigram) -> set[str]:
    """The kinds of check that fail ("split at 8" and "steps after 8" as "split", "steps")."""
    return {c.name.split(" at ")[0].split(" after ")[0] for c in check_model(model) if not c.passed}


@pytest.mark.parametrize("prefix_aware", [False, True])
def test_a_model_that_keeps_the_contract_passes_every_check(prefix_aware):
    checks = check_model(Bigram(prefix_aware=prefix_aware))
    assert all(check.passed for check in checks), [c.line() for c in checks if not c.passed]
    names = {c.name for c in checks}
    assert {"prefill", "step loop", "causality", "batch independence", "state size"} <= names


@pytest.mark.parametrize(("bug", "prefix_aware", "caught"), [
    ("ignores_state", False, {"step loop", "steps"}),
    ("off_by_one", False, {"state size"}),
    ("peek", False, {"causality", "step loop", "split", "steps"}),  # prefill peeks as forward does
    ("newest_first", False, {"steps"}),  # only a step after a multi-token prefill reads the wrong end
    ("never_trims", False, {"state size"}),  # right logits; the state grows under steps
    ("miscounts_short", False, {"state size"}),  # right at T, wrong after 1 or 2 tokens
    ("prefix_peek", True, {"causality", "step loop", "split"}),  # the prefix reads x_M
])
def test_each_broken_model_is_caught_by_the_check_it_breaks(bug, prefix_aware, caught):
    assert failed(Bigram(bug, prefix_aware)) == caught


def test_a_state_that_is_not_per_sequence_is_refused():
    with pytest.raises(ValueError, match="not per sequence"):
        check_model(Bigram("shared_counter"), batch_size=3)


def test_the_check_reads_no_longer_than_a_mixer_can():
    """Hyena generates its filters up to ``max_len``: the default 24 tokens crashed the check of a
    model with max_len=16 (and ``check-model DIR`` stopped there, skipping the other models)."""
    import recallkit as rk

    hybrid = [{"name": "attention"}, {"name": "hyena", "max_len": 12}]
    for mixer in ({"name": "hyena", "max_len": 16}, hybrid):
        model = rk.build_model(rk.ModelConfig(vocab_size=16, d_model=16, num_layers=2, mixer=mixer))
        checks = check_model(model)
        assert all(c.passed for c in checks), [c.line() for c in checks if not c.passed]


class BatchMixing(Bigram):
    """Adds half the batch mean to every row's logits, in forward, prefill and step alike: cached and
    parallel paths agree, causality holds, only a row read alone differs from its row in the batch."""

    @staticmethod
    def _mix(logits):
        return logits + 0.5 * logits.mean(0, keepdim=True)

    def forward(self, x, prefix_len=None):
        return self._mix(super().forward(x, prefix_len))

    def prefill(self, x, prefix_len=None, state=None):
        logits, state = super().prefill(x, prefix_len, state)
        return self._mix(logits), state

    def step(self, token, state):
        logits, state = super().step(token, state)
        return self._mix(logits), state


def test_rows_that_read_each_other_fail_only_batch_independence():
    failing = {c.name for c in check_model(BatchMixing()) if not c.passed}
    assert failing == {"batch independence"}


def test_a_results_directory_names_each_model_apart(tmp_path):
    """One architecture at two widths was listed twice under one name, so a FAIL line could not be
    pinned to a model; now each name carries its width, and a model set apart by another setting
    names one of its runs."""
    import recallkit as rk
    from recallkit.contract import models_to_check
    from recallkit.sweep import Store

    def run(d_model: int, vocab_size: int = 32) -> rk.RunConfig:
        return rk.RunConfig(model={"vocab_size": vocab_size, "d_model": d_model, "num_layers": 1,
                                   "mixer": {"name": "attention"}},
                            task={"name": "mqar", "vocab_size": 32, "seq_len": 16, "num_kv_pairs": 2})

    configs = [run(16), run(32), run(16, vocab_size=48)]
    with Store(tmp_path / "results.sqlite") as store:
        store.add(configs)
    labels = [label for label, _ in models_to_check(str(tmp_path))]
    assert len(labels) == len(set(labels)) == 3
    assert labels[0].endswith("d=16") and labels[1].endswith("d=32")
    assert labels[2] == f"{labels[0]} (run {configs[2].run_id})"
