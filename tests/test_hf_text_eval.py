"""Text tasks answered by greedy generation (recallkit.hf.text_eval): metrics on a tiny model, scoring
with a model that answers like the oracle, read-twice prompts, eviction bookkeeping, refusals."""

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
pytest.importorskip("transformers", minversion="5")

import torch

from recallkit.errors import RecallkitError
from recallkit.hf import load_model
from recallkit.hf.text_eval import evaluate_text, evaluate_text_grid
from recallkit.hf.tiny import tiny_tokenizer
from recallkit.text_tasks import TEXT_TASKS, make_text_task
from tokenizers.processors import TemplateProcessing
import recallkit.hf.text_eval as text_eval
from recallkit.kv import resolve_budget

SMALL = {
    "phonebook_text": {"num_entries": 4, "num_queries": 2},
    "kv_retrieval_text": {"num_pairs": 3, "id_hex_digits": 8},
    "niah_text": {"context_words": 60, "num_distractors": 1},
    "variable_tracking_text": {"context_words": 30, "num_hops": 2},
}
METRICS = {"accuracy", "num_examples", "prefill_tokens", "state_size", "policy", "policy_config", "budget",
           "mode", "budget_tokens", "read_twice", "chat", "task", "setting", "max_new_tokens", "slices",
           "examples"}


@pytest.fixture(scope="module")
def model():
    return load_model("tiny:llama")


def small(name: str):
    return make_text_task({"name": name, **SMALL[name]})


def test_small_configs_cover_every_text_task():
    assert set(SMALL) == set(TEXT_TASKS)


@pytest.mark.parametrize("name", list(SMALL))
def test_each_task_end_to_end_well_formed(model, name):
    task = small(name)
    progress = []
    result = evaluate_text(model, task, num_examples=4, on_example=lambda i, n: progress.append((i, n)))
    assert set(result) == METRICS
    assert result["num_examples"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert result["task"] == name and result["setting"] == task.setting
    assert result["policy"] is None and result["budget_tokens"] is None and result["read_twice"] is False
    assert progress[-1] == (4, 4) and [n for _, n in progress] == [4] * len(progress)
    examples = task.generate(4, 0)
    for slice_name, by_value in result["slices"].items():
        assert set(by_value) == {str(e.slices[slice_name]) for e in examples}
        assert sum(v["num_examples"] for v in by_value.values()) == 4
        assert all(set(v) == {"accuracy", "num_examples"} for v in by_value.values())
    assert len(result["examples"]) == 3
    assert [e["answer"] for e in result["examples"]] == [e.answer for e in examples[:3]]
    shown = result["examples"]
    assert all(task.prompt(e).endswith(s["prompt_tail"]) for e, s in zip(examples, shown, strict=False))
    assert result["chat"] is False
    prompt_tokens = [len(model.tokenizer(task.prompt(e)).input_ids) for e in examples]
    assert result["state_size"] == round(sum(map(model.state_size, prompt_tokens)) / 4)  # after the prompt


class OracleModel:
    """Answers every prompt as the task's oracle does (optionally with the answer's last character
    changed), one token per call through ``step``, then runs on past a newline: tests the decode loop,
    stop rule and scoring, not a model. Counts prefill calls and tokens read."""

    def __init__(self, task, wrong: bool = False, end: str = "\nand more text") -> None:
        self.task, self.wrong, self.end = task, wrong, end
        self.tokenizer = tiny_tokenizer()
        self.config = SimpleNamespace(source="oracle")
        self.hf_config = SimpleNamespace(eos_token_id=self.tokenizer.eos_token_id)
        self.embed = SimpleNamespace(weight=torch.zeros(1))
        self.max_context = 4096
        self.prefills, self.tokens_read = 0, 0

    def state_size(self, seq_len: int) -> int:
        return 10 * seq_len

    def kv_state_size(self, seq_len: int) -> int:
        return 10 * seq_len

    def _script(self, ids: list[int]) -> list[int]:
        answer = self.task.read_answer(self.tokenizer.decode(ids))
        answer = answer[:-1] + ("x" if self.wrong else answer[-1])
        return self.tokenizer(" " + answer + self.end, add_special_tokens=False).input_ids

    def _logits(self, state) -> torch.Tensor:
        logits = torch.zeros(len(state), self.tokenizer.vocab_size)
        for row, (script, cursor) in enumerate(state):
            logits[row, script[min(cursor, len(script) - 1)]] = 1.0
        return logits

    def prefill(self, input_ids, state=None):
        self.prefills += 1
        self.tokens_read += input_ids.numel()
        state = [[self._script(row), 0] for row in input_ids.tolist()]
        return self._logits(state)[:, None].expand(-1, input_ids.shape[1], -1), state

    def step(self, token, state):
        self.tokens_read += token.numel()
        for entry in state:
            entry[1] += 1
        return self._logits(state), state


@pytest.mark.parametrize("name", list(SMALL))
def test_oracle_answers_score_one_and_wrong_answers_zero(name):
    task = small(name)
    oracle = OracleModel(task)
    right = evaluate_text(oracle, task, num_examples=6, batch_size=1)
    assert right["accuracy"] == 1.0
    assert all(v["accuracy"] == 1.0 for by_value in right["slices"].values() for v in by_value.values())
    assert all(e["generated"] == " " + e["answer"] + "\n" for e in right["examples"])  # stopped at "\n"
    assert oracle.prefills == 6  # one prompt read per example, never again
    answer_tokens = [len(oracle.tokenizer(" " + e.answer + "\n").input_ids) for e in task.generate(6, 0)]
    assert oracle.tokens_read == 6 * right["prefill_tokens"] + sum(answer_tokens) - 6  # the stop is not read
    assert right["state_size"] == round(10 * right["prefill_tokens"])  # held when the answer begins
    assert evaluate_text(OracleModel(task, wrong=True), task, num_examples=6)["accuracy"] == 0.0


def test_oracle_stops_at_end_of_sequence_and_scores():
    task = small("phonebook_text")
    eos = tiny_tokenizer().eos_token
    result = evaluate_text(OracleModel(task, end=eos + " junk"), task, num_examples=4)
    assert result["accuracy"] == 1.0
    assert all(e["generated"] == " " + e["answer"] for e in result["examples"])


def test_batching_equal_lengths_changes_nothing(model):
    task = small("variable_tracking_text")  # its prompts all have 210 tokens: one batch of 6
    calls = []
    original = model.prefill
    model.prefill = lambda ids, *a, **k: calls.append(ids.shape) or original(ids, *a, **k)
    try:
        batched = evaluate_text(model, task, num_examples=6, batch_size=8)
        assert calls[0] == (6, 210)
        calls.clear()
        single = evaluate_text(model, task, num_examples=6, batch_size=1)
        assert calls[0] == (1, 210)
    finally:
        del model.prefill
    assert batched["examples"] == single["examples"] and batched["state_size"] == single["state_size"]


def test_read_twice_adds_about_the_context(model):
    task = small("phonebook_text")
    once = evaluate_text(model, task, num_examples=4)
    twice = evaluate_text(model, task, num_examples=4, read_twice=True)
    assert twice["read_twice"] is True
    texts = [e.context + "\n\n" + e.question + "\n\n" for e in task.generate(4, 0)]
    reading = [len(model.tokenizer(text).input_ids) for text in texts]
    added = twice["prefill_tokens"] - once["prefill_tokens"]
    assert abs(added - sum(reading) / len(reading)) <= 2  # BPE may merge across the seam
    assert added > 0.8 * once["prefill_tokens"]


@pytest.mark.parametrize("policy", ["full", "window", "h2o"])
def test_policy_with_whole_budget_generates_as_without(model, policy):
    task = small("kv_retrieval_text")
    plain = evaluate_text(model, task, num_examples=3)
    kept = evaluate_text(model, task, num_examples=3, policy=policy, budget=1.0)
    assert kept["examples"] == plain["examples"]
    assert kept["state_size"] == plain["state_size"]  # the caches hold every token read
    assert kept["policy"] == policy and kept["mode"] == "prefill" and kept["budget"] == 1.0
    prompt_tokens = [len(model.tokenizer(task.prompt(e)).input_ids) for e in task.generate(3, 0)]
    assert kept["budget_tokens"] == max(prompt_tokens)
    if policy == "full":  # it never evicts, so it needs no budget: the whole prompt
        unbudgeted = evaluate_text(model, task, num_examples=3, policy=policy)
        assert {k: v for k, v in unbudgeted.items() if k != "time_s"} == {
            k: v for k, v in kept.items() if k != "time_s"}


@pytest.mark.parametrize("mode", ["prefill", "continuous"])
def test_small_budget_holds_less(model, mode):
    task = small("phonebook_text")
    plain = evaluate_text(model, task, num_examples=2)
    window = evaluate_text(model, task, num_examples=2, policy="window", budget=16, mode=mode)
    assert window["budget_tokens"] == 16 and window["mode"] == mode
    kv_per_token = model.kv_state_size(2) - model.kv_state_size(1)
    assert window["state_size"] == kv_per_token * 16  # when the answer begins
    assert window["state_size"] < plain["state_size"]


def test_decode_reads_each_prompt_once(model):
    task = small("phonebook_text")
    blocks, steps = [], []
    original = model.model.forward

    def counting(*args, **kwargs):
        (blocks if kwargs["input_ids"].shape[1] > 1 else steps).append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    model.model.forward = counting
    try:
        result = evaluate_text(model, task, num_examples=4, batch_size=1)
    finally:
        del model.model.forward
    assert len(blocks) == 4 and all(shape[0] == 1 for shape in blocks)
    assert sum(shape[1] for shape in blocks) == 4 * result["prefill_tokens"]
    assert len(steps) <= 4 * (result["max_new_tokens"] - 1)


def test_too_long_prompt_refused_before_any_work(model):
    task = make_text_task({"name": "niah_text", "context_words": 500})
    model.prefill = lambda *a, **k: pytest.fail("the model ran before the length check")
    try:
        with pytest.raises(RecallkitError, match="over tiny:llama's context of 512 tokens"):
            evaluate_text(model, task, num_examples=2)
        fits = small("phonebook_text")
        with pytest.raises(RecallkitError, match="new tokens"):
            evaluate_text(model, fits, num_examples=2, max_new_tokens=500)
    finally:
        del model.prefill


def test_an_over_long_prompt_is_refused_before_the_others_are_tokenised(model):
    """Every prompt was tokenised before the context check read the longest (seconds each at sizes
    no model can read)."""
    class Counting:
        def __init__(self, tokenizer):
            self.tokenizer, self.prompts = tokenizer, 0

        def __call__(self, text, **kwargs):
            self.prompts += len(text) > 200  # the answers' ids are read first, from short strings
            return self.tokenizer(text, **kwargs)

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

    original = model.tokenizer
    model.tokenizer = counting = Counting(original)
    try:
        with pytest.raises(RecallkitError, match="a prompt has .* over tiny:llama's context of 512 tokens"):
            evaluate_text(model, make_text_task({"name": "niah_text", "context_words": 500}), num_examples=6)
    finally:
        model.tokenizer = original
    assert counting.prompts == 1


ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
             "tried to allocate 3040894976 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error", [RuntimeError(ALLOCATOR), MemoryError()])
def test_a_prompt_that_runs_out_of_memory_is_named_in_one_line(model, monkeypatch, error):
    """A model without a context limit (an SSM) takes any prompt; torch's allocator error said only
    how many bytes it tried to allocate, not which prompt."""
    import recallkit.hf.text_eval as text_eval

    def out_of_memory(*args, **kwargs):
        raise error

    task = small("variable_tracking_text")  # its prompts have one length: one batch of two
    monkeypatch.setattr(model, "prefill", out_of_memory)
    expected = (r"^reading 2 prompts of [\d,]+ tokens needs more memory than this machine has "
                r"\((one tensor of 2.8 GiB|none left)\); use a shorter task or a smaller batch_size$")
    with pytest.raises(RecallkitError, match=expected):
        evaluate_text(model, task, num_examples=2, batch_size=2)
    monkeypatch.setattr(text_eval, "read_prompt", out_of_memory)
    with pytest.raises(RecallkitError, match="^reading a prompt of .* tokens needs more memory"):
        evaluate_text_grid(model, task, [None], num_examples=2)


@pytest.mark.parametrize("message", ["shape mismatch", "preallocated buffer is too small"])
def test_other_runtime_errors_pass_unchanged(model, monkeypatch, message):
    def broken(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(model, "prefill", broken)
    with pytest.raises(RuntimeError, match=f"^{message}$"):
        evaluate_text(model, small("phonebook_text"), num_examples=1)


def test_memory_run_out_of_after_the_prompt_is_read_is_not_blamed_on_the_prompt(model, monkeypatch):
    """Forks of the prompt's state, one per setting, take memory that a shorter task would not save."""
    import recallkit.hf.text_eval as text_eval

    def out_of_memory(*args, **kwargs):
        raise RuntimeError(ALLOCATOR)

    monkeypatch.setattr(text_eval, "stack_states", out_of_memory)
    settings = [("h2o", budget, "prefill") for budget in (0.25, 0.5, 0.75)]
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        evaluate_text_grid(model, small("phonebook_text"), settings, num_examples=1)


def test_chat_puts_the_prompt_in_a_user_turn_and_the_cue_in_the_reply(model):
    task = small("phonebook_text")
    example = task.generate(1, 0)[0]
    with pytest.raises(RecallkitError, match="no chat template"):
        evaluate_text(model, task, num_examples=1, chat=True)
    model.tokenizer.chat_template = ("{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}"
                                     "{% if add_generation_prompt %}<bot>{% endif %}")
    try:
        result = evaluate_text(model, task, num_examples=1, chat=True)
        by_default = evaluate_text(model, task, num_examples=1)  # chat=None: the template, when there is one
        plain = evaluate_text(model, task, num_examples=1, chat=False)
    finally:
        model.tokenizer.chat_template = None
    assert by_default == result and plain["chat"] is False
    assert evaluate_text(model, task, num_examples=1)["chat"] is False  # no template: plain text
    body = task.prompt(example).removesuffix("\n" + task.answer_cue)
    assert result["chat"] is True
    assert result["examples"][0]["prompt_tail"] == f"<user>{body}</user><bot>Answer:"[-200:]


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": 0.5}, "needs an eviction policy"),
    ({"policy": "window"}, "needs a budget"),
    ({"policy": "nope", "budget": 0.5}, "unknown eviction policy"),
    ({"policy": "window", "budget": 1.5}, "fractional budget"),
    ({"policy": "window", "budget": 0.5, "mode": "sometimes"}, "unknown eviction mode"),
    ({"num_examples": 0}, "num_examples"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"policy": {"name": "h2o", "recnt": 4}, "budget": 8}, "invalid H2O: recnt: Extra inputs"),
    ({"policy": "full", "budget": 3}, "full never evicts"),  # budget_tokens=3 for a cache holding all
])
def test_bad_input_is_one_line(model, kwargs, message):
    model.prefill = lambda *a, **k: pytest.fail("the model ran before the checks")
    try:
        with pytest.raises(RecallkitError, match=message) as error:
            evaluate_text(model, small("phonebook_text"), **kwargs)
    finally:
        del model.prefill
    assert "\n" not in str(error.value)


def test_a_grid_setting_without_its_mode_is_one_line(model):
    from recallkit.hf.text_eval import evaluate_text_grid

    with pytest.raises(RecallkitError, match=r"None or \(policy, budget, mode\); got \('h2o', 8\)"):
        evaluate_text_grid(model, small("phonebook_text"), [("h2o", 8)])


def test_chat_prompt_has_one_bos_from_its_template():
    model = load_model("tiny:llama")
    tok = model.tokenizer
    bos = tok.bos_token_id
    tok._tokenizer.post_processor = TemplateProcessing(single=f"{tok.bos_token} $A",
                                                       special_tokens=[(tok.bos_token, bos)])
    assert tok("hi").input_ids[0] == bos  # this tokenizer adds BOS to plain text
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}"
                         "{% if add_generation_prompt %}<bot>{% endif %}")
    read = []
    original = model.prefill
    model.prefill = lambda ids, *a, **k: read.append(ids[0].tolist()) or original(ids, *a, **k)
    task = make_text_task({"name": "phonebook_text", "num_entries": 2, "num_queries": 1})
    evaluate_text(model, task, num_examples=1, chat=True, max_new_tokens=1)
    assert read[0][0] == bos and read[0][1] != bos and read[0].count(bos) == 1
    read.clear()
    evaluate_text(model, task, num_examples=1, chat=False, max_new_tokens=1)
    assert read[0][0] == bos and read[0].count(bos) == 1


@pytest.mark.parametrize("mode", ["prefill", "continuous"])
def test_a_fractional_budget_follows_each_prompts_length(monkeypatch, mode):
    model = load_model("tiny:llama")
    task = make_text_task({"name": "phonebook_text", "num_entries": 4, "num_queries": 1})
    examples = task.generate(3, 0)
    lengths = [len(model.tokenizer(task.prompt(e)).input_ids) for e in examples]
    assert len(set(lengths)) > 1  # prompts of different lengths
    seen = []
    fork, alone = text_eval.fork_state, text_eval.evicting_state
    monkeypatch.setattr(text_eval, "fork_state",
                        lambda read, p, b, *a: seen.append(b) or fork(read, p, b, *a))
    monkeypatch.setattr(text_eval, "evicting_state",
                        lambda m, n, p, b, md: seen.append(b) or alone(m, n, p, b, md))
    result = text_eval.evaluate_text(model, task, num_examples=3, policy="window", budget=0.5, mode=mode,
                                     max_new_tokens=2)
    expected = [resolve_budget(0.5, n) for n in lengths]
    assert len(set(expected)) > 1
    if mode == "continuous":  # one evicting state per example, in order
        assert seen == expected
    else:  # forks of each read (greedy_match may fork again): each example's own budget
        assert set(seen) == set(expected)
    assert result["budget_tokens"] == max(expected)
