"""One reading of a prompt for many policies (recallkit.hf.prompt_read), greedy scoring from one
teacher-forced pass (recallkit.hf.greedy), and the grid evaluation that uses both."""

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers", minversion="5")

import torch

import recallkit.hf.text_eval as text_eval
from recallkit.hf import load_model
from recallkit.hf.greedy import generate, greedy_match, teacher_forced_argmax
from recallkit.hf.prompt_read import fork_state, read_prompt, stack_states
from recallkit.hf.text_eval import evaluate_text, evaluate_text_grid
from recallkit.hf.tiny import tiny_tokenizer
from recallkit.inference.decode import evicting_state
from recallkit.kv import make_policy
from recallkit.text_tasks import make_text_task

pytestmark = pytest.mark.usefixtures("one_thread")
POLICIES = ["window", {"name": "sinks", "num_sinks": 2, "reindex_positions": True}, "h2o", "snapkv", "tova",
            "knorm", "random", "scissorhands"]


@pytest.mark.parametrize("arch", ["llama", "qwen3_next", "lfm2", "falcon_h1"])
def test_a_forked_state_continues_exactly_as_the_policys_own_run(arch):
    model = load_model(f"tiny:{arch}")
    ids = torch.randint(3, 500, (1, 40), generator=torch.Generator().manual_seed(0))
    prompt, after = ids[:, :32], ids[0, 32:]
    with torch.no_grad():
        read = read_prompt(model, prompt[0].tolist())
        for policy in map(make_policy, POLICIES):
            for budget in (5, 12):
                state, caches = evicting_state(model, 1, policy, budget, "prefill")
                logits, state = model.prefill(prompt, state=state)
                for cache in caches:
                    cache.compress()
                forked, forks = fork_state(read, policy, budget)
                torch.testing.assert_close(read.logits, logits[:, -1])  # the last row only: other blocking
                assert [len(c) for c in forks] == [len(c) for c in caches] == [budget] * len(caches)
                for token in after:
                    expected, state = model.step(token[None], state)
                    got, forked = model.step(token[None], forked)
                    assert torch.equal(got, expected), (policy.name, budget)
                assert all(torch.equal(a.positions, b.positions) for a, b in zip(forks, caches, strict=True))
        assert all(len(c) == 32 for c in read.caches)  # the reading itself was never compressed


class ScriptModel:
    """Greedy decoding writes ``script`` after any prompt: the argmax after the prompt and k tokens
    is script[k] while those k tokens are the script's, a filler token once they are not. Its state
    is the list of tokens read; counts forward calls."""

    def __init__(self, script: list[int], filler: int) -> None:
        self.tokenizer = tiny_tokenizer()
        self.hf_config = SimpleNamespace(eos_token_id=self.tokenizer.eos_token_id)
        self.script, self.filler, self.calls, self.prompt_len = script, filler, 0, 3

    def _next(self, read: list[int]) -> int:
        written = read[self.prompt_len:]
        on_script = written == self.script[: len(written)] and len(written) < len(self.script)
        return self.script[len(written)] if on_script else self.filler

    def _logits(self, token: int) -> torch.Tensor:
        logits = torch.zeros(len(self.tokenizer))
        logits[token] = 1.0
        return logits

    def prefill(self, ids, state):
        self.calls += 1
        rows = []
        for token in ids[0].tolist():
            state = state + [token]
            rows.append(self._logits(self._next(state)))
        return torch.stack(rows)[None], state

    def step(self, token, state):
        logits, state = self.prefill(token[:, None], state)
        return logits[:, -1], state


ANSWER = "417-2093"


def _encode(text: str) -> list[int]:
    return tiny_tokenizer()(text, add_special_tokens=False).input_ids


def _chars(text: str) -> list[int]:  # the same text in other tokens: one per character
    return [i for ch in text for i in _encode(ch)]


@pytest.mark.parametrize("script, filler, passes", [  # passes: forward passes when one round decides
    (_encode(" " + ANSWER) + _encode("\n"), 0, 2),  # right, then a newline: the probe, then the rest
    (_encode(" " + ANSWER), "eos", 2),  # right, then end of sequence
    (_encode(" " + ANSWER) + _encode("(home)\n"), 0, 2),  # right number, but the line goes on
    (_encode(" 417-2"), "digit", 2),  # wrong digit after the probe: no generation needed
    (_encode(" 41"), "digit", 1),  # wrong digit within the probe: the rest is not read
    (_encode(" 9"), "digit", 0),  # wrong from the first token: the prompt's logits decide
    (_chars(" " + ANSWER + "\n"), 0, None),  # right, spelled in other tokens: generated
    (_encode("\n\n " + ANSWER + "\n"), 0, None),  # opens with blank lines: generated
    (_encode(" " + ANSWER) + _encode(" \n"), 0, None),  # trailing blank: still open after the answer
    (_chars(" 417-20"), "digit", None),  # other tokens, then wrong
])
def test_greedy_match_scores_exactly_as_generating(script, filler, passes):
    tokenizer = tiny_tokenizer()
    filler = {"eos": tokenizer.eos_token_id, "digit": _encode("5")[0]}.get(filler, filler)
    model = ScriptModel(script, filler)
    prompt = [7, 8, 9]
    logits, state = model.prefill(torch.tensor([prompt]), [])
    text = generate(model, logits[:, -1], state, max_new_tokens=30)[0]
    expected = text.strip().splitlines()[0].strip() == ANSWER if text.strip() else False
    fresh = []

    def fresh_state():
        fresh.append(1)
        return list(prompt)

    def score(generated, answer):
        return bool(generated.strip()) and generated.strip().splitlines()[0].strip() == answer

    model.calls = 0
    correct, decided = greedy_match(model, logits[:, -1], fresh_state, ANSWER, score, 30)
    assert correct == expected
    assert text.startswith(decided)
    assert (len(fresh) == 1) == (passes is not None)
    if passes is not None:
        assert model.calls == passes


TASK = make_text_task({"name": "kv_retrieval_text", "num_pairs": 4, "id_hex_digits": 6})
SETTINGS = [None, ("window", 0.5, "prefill"), ("h2o", 8, "prefill"), ("snapkv", 0.25, "prefill"),
            ("sinks", 0.25, "continuous")]


def test_the_grid_equals_each_setting_alone_and_reads_each_prompt_once(monkeypatch):
    model = load_model("tiny:llama")
    reads = []
    original = text_eval.read_prompt
    monkeypatch.setattr(text_eval, "read_prompt", lambda *a, **k: reads.append(1) or original(*a, **k))
    grid = evaluate_text_grid(model, TASK, SETTINGS, num_examples=5, generate_all=True)
    assert len(reads) == 5  # the continuous setting reads its own
    quick = evaluate_text_grid(model, TASK, SETTINGS, num_examples=5)
    for setting, together, fast in zip(SETTINGS, grid, quick, strict=True):
        kwargs = {} if setting is None else dict(zip(("policy", "budget", "mode"), setting, strict=True))
        if setting is None:
            alone = evaluate_text_grid(model, TASK, [None], num_examples=5, generate_all=True)[0]
            assert together["state_size"] == evaluate_text(model, TASK, num_examples=5)["state_size"]
        else:
            alone = evaluate_text(model, TASK, num_examples=5, generate_all=True, **kwargs)
        assert together == alone
        assert {k: v for k, v in fast.items() if k != "examples"} == {
            k: v for k, v in together.items() if k != "examples"}
        for shown, full in zip(fast["examples"], together["examples"], strict=True):
            assert shown["correct"] == full["correct"] and full["generated"].startswith(shown["generated"])
    assert quick[0]["examples"] == grid[0]["examples"]  # the first setting's shown answers: generated


def _sliding_then_full():
    """A tiny Qwen2 whose first layer is a sliding window of 8 and second full attention (the Gemma
    pattern): its layers hold different numbers of tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from recallkit.hf.adapter import HFModel

    config = AutoConfig.for_model(
        "qwen2", vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
        hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, num_hidden_layers=2, use_sliding_window=True, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return HFModel(model, tiny_tokenizer(), "cfg:qwen2")


@pytest.mark.parametrize("build", [lambda: load_model("tiny:llama", dtype=torch.bfloat16),
                                   _sliding_then_full], ids=["bfloat16", "sliding_then_full"])
def test_the_grid_runs_in_half_precision_and_on_mixed_windows_as_each_setting_alone(build):
    """Both crashed: a bfloat16 ring of attention statistics fed float32 attention, and stacked forks
    were padded to the first layer's width, which a later full-attention layer exceeds."""
    model = build()
    settings = [None, ("h2o", 12, "prefill"), ("window", 20, "prefill")]
    grid = evaluate_text_grid(model, TASK, settings, num_examples=3)
    for setting, together in zip(settings[1:], grid[1:], strict=True):
        alone = evaluate_text(model, TASK, num_examples=3, **dict(zip(("policy", "budget", "mode"), setting)))
        assert together["state_size"] == alone["state_size"]
        assert [e["correct"] for e in together["examples"]] == [e["correct"] for e in alone["examples"]]


@pytest.mark.parametrize("arch", ["llama", "qwen3_next", "falcon_h1"])
def test_forks_of_any_size_continue_together_as_each_alone(arch):
    """Forks holding 9, 20, 24 and all 30 tokens, padded to 30 in one batch: each row's logits are its
    fork's alone, and so are the probed argmaxes after some rows are dropped (the script of rows:
    the argmax after the prompt, then after each block token, up to the first disagreement)."""
    model = load_model(f"tiny:{arch}")
    ids = torch.randint(3, 500, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    block = torch.randint(3, 500, (1, 5), generator=torch.Generator().manual_seed(4))
    read = read_prompt(model, ids)
    specs = [("window", 9), ("h2o", 20), ("snapkv", 24), (None, None),
             ({"name": "sinks", "num_sinks": 2, "reindex_positions": True}, 9)]
    forks = [fork_state(read, p and make_policy(p), b) for p, b in specs]
    if arch != "llama":  # recurrent layers, or a recurrent state in every layer: no stack
        assert stack_states([f[0] for f in forks[:3]], [f[1] for f in forks[:3]]) is None
        return
    assert stack_states([f[0] for f in forks], [f[1] for f in forks]) is None  # sinks places tokens at 9
    stacked = stack_states([f[0] for f in forks[:4]], [f[1] for f in forks[:4]])
    with torch.no_grad():
        together, _ = model.prefill(block.expand(4, -1), state=stacked)
        for row, (p, b) in enumerate(specs[:4]):
            alone, _ = model.prefill(block, state=fork_state(read, p and make_policy(p), b)[0])
            torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.equal(together[0], together[1])  # the rows did hold different tokens
    # The full fork's own greedy continuation as the expected answer: it agrees all the way, some
    # other fork parts from it within the probe, so the rest is read by fewer rows.
    expected = generate_ids(model, read.logits, fork_state(read, None, None)[0], 6)
    stacked = stack_states([f[0] for f in forks[:4]], [f[1] for f in forks[:4]])
    together = teacher_forced_argmax(model, read.logits.expand(4, -1), stacked, expected, probe=2)
    for row, (p, b) in enumerate(specs[:4]):
        alone = teacher_forced_argmax(model, read.logits, fork_state(read, p and make_policy(p), b)[0],
                                      expected, probe=len(expected))[0]
        assert together[row] == alone
    assert together[3][:6] == expected and len(together[3]) == 7
    assert min(len(row) for row in together) <= 3


def generate_ids(model, logits, state, n):
    """``n`` greedy tokens (ids) from ``logits`` after a prompt and the state after it."""
    tokens = [int(logits.argmax(-1))]
    with torch.no_grad():
        for _ in range(n - 1):
            logits, state = model.step(torch.tensor(tokens[-1:]), state)
            tokens.append(int(logits.argmax(-1)))
    return tokens


def test_the_grid_batches_forks_of_one_budget_and_scores_as_generating(monkeypatch):
    model = load_model("tiny:llama")
    stacks = []
    original = text_eval.stack_states
    monkeypatch.setattr(text_eval, "stack_states", lambda *a: stacks.append(original(*a)) or stacks[-1])
    settings = [None, *((p, 0.25, "prefill") for p in ("window", "h2o", "tova", "knorm", "snapkv", "sinks"))]
    quick = evaluate_text_grid(model, TASK, settings, num_examples=6)
    assert any(s is not None for s in stacks)
    generated = evaluate_text_grid(model, TASK, settings, num_examples=6, generate_all=True)
    assert [q["accuracy"] for q in quick] == [g["accuracy"] for g in generated]
    assert all(q["slices"] == g["slices"] for q, g in zip(quick, generated, strict=True))


def test_a_model_without_attention_runs_the_grid_unevicted_and_refuses_policies():
    from recallkit.errors import RecallkitError

    model = load_model("tiny:mamba2")
    (plain,) = evaluate_text_grid(model, TASK, [None], num_examples=2)
    assert plain["state_size"] == model.state_size(1)  # a fixed state, whatever the prompt's length
    for mode in ("prefill", "continuous"):
        with pytest.raises(RecallkitError, match="tiny:mamba2 has none"):
            evaluate_text_grid(model, TASK, [None, ("window", 0.5, mode)], num_examples=2)


def test_an_answer_after_a_blank_line_is_settled_by_a_second_block_not_generated(monkeypatch):
    import recallkit.hf.greedy as greedy

    monkeypatch.setattr(greedy, "generate", lambda *a, **k: pytest.fail("generated token by token"))
    for script, right in [(_encode(" \n" + ANSWER) + _encode("\n"), True), (_encode(" \n417-20"), False)]:
        model = ScriptModel(script, _encode("5")[0])
        logits, _ = model.prefill(torch.tensor([[7, 8, 9]]), [])
        model.calls = 0
        correct, text = greedy.greedy_match(model, logits[:, -1], lambda: [7, 8, 9], ANSWER,
                                            lambda g, a: g.strip().splitlines()[0].strip() == a, 30)
        assert correct == right and 2 <= model.calls <= 2 * greedy.ROUNDS  # a probe and the rest per round
        assert text.strip().startswith(ANSWER if right else "417-20")
