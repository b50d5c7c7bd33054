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
from recallkit.hf.greedy import generate, greedy_match
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


@pytest.mark.parametrize("script, filler, decided_in_one_pass", [
    (_encode(" " + ANSWER) + _encode("\n"), 0, True),  # right, then a newline
    (_encode(" " + ANSWER), "eos", True),  # right, then end of sequence
    (_encode(" " + ANSWER) + _encode("(home)\n"), 0, True),  # right number, but the line goes on
    (_encode(" 417-2"), "digit", True),  # wrong digit: no generation needed
    (_encode(" 9"), "digit", True),  # wrong from the first token
    (_chars(" " + ANSWER + "\n"), 0, False),  # right, spelled in other tokens: generated
    (_encode("\n\n " + ANSWER + "\n"), 0, False),  # opens with blank lines: generated
    (_encode(" " + ANSWER) + _encode(" \n"), 0, False),  # trailing blank: still open after the answer
    (_chars(" 417-20"), "digit", False),  # other tokens, then wrong
])
def test_greedy_match_scores_exactly_as_generating(script, filler, decided_in_one_pass):
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
    assert (len(fresh) == 1) == decided_in_one_pass
    if decided_in_one_pass:
        assert model.calls == 1


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


@pytest.mark.parametrize("arch", ["llama", "qwen3_next", "falcon_h1"])
def test_forks_of_one_size_continue_together_as_each_alone(arch):
    model = load_model(f"tiny:{arch}")
    ids = torch.randint(3, 500, (30,), generator=torch.Generator().manual_seed(3)).tolist()
    block = torch.randint(3, 500, (1, 5), generator=torch.Generator().manual_seed(4))
    read = read_prompt(model, ids)
    policies = ["window", "h2o", "snapkv", {"name": "sinks", "num_sinks": 2, "reindex_positions": True}]
    forks = [fork_state(read, make_policy(p), 9) for p in policies]
    if arch != "llama":  # recurrent layers, or a recurrent state in every layer: no stack
        assert stack_states([f[0] for f in forks[:3]], [f[1] for f in forks[:3]]) is None
        return
    assert stack_states([f[0] for f in forks], [f[1] for f in forks]) is None  # sinks places tokens at 9
    stacked = stack_states([f[0] for f in forks[:3]], [f[1] for f in forks[:3]])
    with torch.no_grad():
        together, _ = model.prefill(block.expand(3, -1), state=stacked)
        for row, (state, _) in enumerate(forks[:3]):
            alone, _ = model.prefill(block, state=state)
            torch.testing.assert_close(together[row], alone[0])
    assert not torch.equal(together[0], together[1])  # the rows did hold different tokens


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
        assert correct == right and 2 <= model.calls <= greedy.ROUNDS
        assert text.strip().startswith(ANSWER if right else "417-20")
