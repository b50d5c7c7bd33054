"""Text recall tasks for pretrained models: every registered task is checked through one table (oracle,
determinism, seeding, JSON round trip, read-twice rendering, length axis, worked examples), then each
task's own structure."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import random
import re

import pytest

from recallkit.text_tasks import (
    TEXT_TASKS,
    KVRetrievalTextConfig,
    NiahTextConfig,
    PhonebookTextConfig,
    TextTaskConfig,
    VariableTrackingTextConfig,
    make_text_task,
)
from recallkit.text_tasks import base as text_base
from recallkit.text_tasks.draws import depth_bucket
from recallkit.text_tasks.haystack import NOISE, filler, insert
from recallkit.text_tasks.names import NUM_FULL_NAMES
from recallkit.text_tasks.niah import MAX_DISTRACTORS
from recallkit.text_tasks.niah import draw_needles

SMALL = {
    "phonebook_text": {"num_entries": 20},
    "kv_retrieval_text": {"num_pairs": 12, "id_hex_digits": 8},
    "niah_text": {"context_words": 150, "num_distractors": 4},
    "variable_tracking_text": {"context_words": 150, "num_hops": 3, "num_chains": 3, "haystack": "words"},
}
"""A fast configuration of every registered task (the table must cover the registry)."""

IMPOSSIBLE = [
    ("phonebook_text", {"num_entries": NUM_FULL_NAMES + 1}, "distinct names"),
    ("phonebook_text", {"num_entries": 3, "num_queries": 4}, "num_queries=4 > num_entries=3"),
    ("phonebook_text", {"num_entries": 0}, "greater than or equal to 1"),
    ("kv_retrieval_text", {"num_pairs": 2**15 + 1, "id_hex_digits": 4}, "65536 distinct 4-hex ids"),
    ("kv_retrieval_text", {"id_hex_digits": 33}, "less than or equal to 32"),
    ("niah_text", {"depth": 1.5}, "less than or equal to 1"),
    ("niah_text", {"depth": -0.1}, "greater than or equal to 0"),
    ("niah_text", {"num_distractors": MAX_DISTRACTORS + 1}, "distinct distractor keys"),
    ("niah_text", {"haystack": "essay"}, "'noise' or 'words'"),
    ("variable_tracking_text", {"num_hops": 0}, "greater than or equal to 1"),
    ("variable_tracking_text", {"context_words": 0}, "greater than or equal to 1"),
]


def small(key: str) -> TextTaskConfig:
    return make_text_task({"name": key, **SMALL[key]})


def normalise(text: str) -> str:
    """Whitespace collapsed, so a docstring's wrapped and indented rendering compares to the prompt."""
    return " ".join(text.split())


def test_the_table_covers_the_registry() -> None:
    assert set(SMALL) == set(TEXT_TASKS)
    assert {key for key, _, _ in IMPOSSIBLE} == set(TEXT_TASKS)
    assert all(cls.model_fields["name"].default == key for key, cls in TEXT_TASKS.items())


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
@pytest.mark.parametrize("read_twice", [False, True])
def test_oracle_scores_one(key: str, read_twice: bool) -> None:
    task = small(key)
    examples = task.generate(50, seed=1)
    assert len(examples) == 50
    accuracy = sum(task.score(task.oracle(e, read_twice), e.answer) for e in examples) / len(examples)
    assert accuracy == 1.0


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_oracle_reads_the_prompt_not_the_answer(key: str) -> None:
    task = small(key)
    example = task.generate(1, seed=2)[0]
    assert task.oracle(dataclasses.replace(example, answer="not the answer")) == example.answer
    with pytest.raises(ValueError, match="no match"):
        task.oracle(dataclasses.replace(example, context="nothing to find here"))


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_generation_is_deterministic_per_seed(key: str) -> None:
    task = small(key)
    assert task.generate(10, seed=3) == task.generate(10, seed=3)
    assert task.generate(10, seed=3) != task.generate(10, seed=4)
    assert task.generate(3, seed=3) == task.generate(10, seed=3)[:3]


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_the_global_random_state_is_untouched(key: str) -> None:
    random.seed(123)
    state = random.getstate()
    small(key).generate(5, seed=0)
    assert random.getstate() == state


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_json_round_trip(key: str) -> None:
    task = small(key)
    assert make_text_task(json.loads(task.model_dump_json())) == task
    assert make_text_task(task) is task
    assert make_text_task(key) == TEXT_TASKS[key]()
    with pytest.raises(ValueError):  # configs are strict: an unknown field is an error
        make_text_task({"name": key, "no_such_field": 1})


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_read_twice_repeats_context_and_question_before_the_cue(key: str) -> None:
    task = small(key)
    example = task.generate(1, seed=5)[0]
    once, twice = task.prompt(example), task.prompt(example, read_twice=True)
    ending = f"{example.question}\n{task.answer_cue}"
    assert once.count(example.context) == 1 and twice.count(example.context) == 2
    assert once.count(example.question) == 1 and twice.count(example.question) == 2
    assert once.endswith(ending) and twice.endswith(ending)
    assert twice.index(example.question) < twice.rindex(example.context)  # the question comes first
    if task.instruction:
        assert once.startswith(task.instruction + "\n\n") and twice.count(task.instruction) == 1


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_at_length_moves_along_the_length_axis(key: str) -> None:
    task = small(key)
    longer = task.at_length(2 * task.length)
    assert longer.length == 2 * task.length and type(longer) is type(task)
    assert longer.model_dump() == task.model_dump() | {task.length_field: 2 * task.length}
    assert {e.slices["length"] for e in longer.generate(5, seed=0)} == {2 * task.length}
    assert {e.slices["length"] for e in task.generate(5, seed=0)} == {task.length}
    assert longer.setting != task.setting and str(2 * task.length) in longer.setting
    assert len(longer.prompt(longer.generate(1, seed=0)[0])) > len(task.prompt(task.generate(1, seed=0)[0]))
    with pytest.raises(ValueError):
        task.at_length(0)


@pytest.mark.parametrize(("key", "fields", "message"), IMPOSSIBLE)
def test_impossible_sizes_are_errors(key: str, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_text_task({"name": key, **fields})


def test_unknown_task_and_no_examples_are_errors() -> None:
    known = "known: phonebook_text, kv_retrieval_text, niah_text, variable_tracking_text"
    with pytest.raises(ValueError, match=f"unknown text task 'nope'; {known}$"):
        make_text_task("nope")
    with pytest.raises(ValueError, match="num_examples must be >= 1"):
        small("phonebook_text").generate(0, seed=0)


def docstring_example(cls: type) -> tuple[TextTaskConfig, str]:
    """The config of the class docstring's worked example and the docstring, whitespace-normalised."""
    doc = normalise(inspect.getdoc(cls))
    call = re.search(rf"``{cls.__name__}\((.*?)\)\.generate\(1, seed=0\)\[0\]``", doc)
    assert call, f"{cls.__name__} has no worked example"
    keywords = ast.parse(f"f({call.group(1)})").body[0].value.keywords
    return cls(**{k.arg: ast.literal_eval(k.value) for k in keywords}), doc


@pytest.mark.parametrize("key", sorted(TEXT_TASKS))
def test_the_docstring_worked_example_is_what_the_task_generates(key: str) -> None:
    task, doc = docstring_example(TEXT_TASKS[key])
    example = task.generate(1, seed=0)[0]
    assert normalise(task.prompt(example)) in doc
    assert f"answer: {example.answer}, slices: {example.slices}" in doc


def test_the_module_docstring_shows_the_phonebook_prompts() -> None:
    task = PhonebookTextConfig(num_entries=3)
    example = task.generate(1, seed=0)[0]
    doc = inspect.getdoc(text_base)
    lines = task.prompt(example, read_twice=True).split("\n")
    assert "\n".join("    " + line if line else "" for line in lines) in doc  # exact, line by line


def test_score_is_exact_match_of_the_first_stripped_line() -> None:
    task = small("phonebook_text")
    assert task.score("434-3902", "434-3902")
    assert task.score(" 434-3902\nWhat is the phone number of", "434-3902")
    assert task.score("\n\n  434-3902  \n", "434-3902")
    for wrong in ("434-3902.", "It is 434-3902", "434-39021", "", "  \n ", "\n434-3903\n434-3902"):
        assert not task.score(wrong, "434-3902")


def test_depth_buckets_are_nearest_quarters() -> None:
    assert [depth_bucket(x) for x in (0.0, 0.1, 0.125, 0.3, 0.495, 0.5, 0.8, 0.875, 1.0)] == [
        0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]


def test_phonebook_queries_share_a_book() -> None:
    task = PhonebookTextConfig(num_entries=8, num_queries=3)
    examples = task.generate(6, seed=0)
    assert examples[0].context == examples[2].context != examples[3].context
    assert len({e.question for e in examples[:3]}) == 3
    lines = examples[0].context.split("\n")
    assert len(lines) == 8 and len({line.split(": ")[0] for line in lines}) == 8
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+ [A-Z][A-Za-z]+: \d{3}-\d{4}", line) for line in lines)
    depths = {e.slices["depth"] for e in PhonebookTextConfig(num_entries=9).generate(200, seed=0)}
    assert depths == {0.0, 0.25, 0.5, 0.75, 1.0}


def test_kv_context_is_json_of_distinct_ids() -> None:
    example = KVRetrievalTextConfig(num_pairs=5).generate(1, seed=0)[0]
    record = json.loads(example.context)
    assert len(record) == 5 and len(set(record) | set(record.values())) == 10
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    assert all(re.fullmatch(uuid, i) for i in (*record, *record.values()))
    short = json.loads(KVRetrievalTextConfig(num_pairs=5, id_hex_digits=6).generate(1, seed=0)[0].context)
    assert all(re.fullmatch(r"[0-9a-f]{6}", i) for i in (*short, *short.values()))


def test_niah_needles_have_near_identical_keys_and_the_asked_depth() -> None:
    task = NiahTextConfig(context_words=200, num_distractors=6)
    for example in task.generate(10, seed=0):
        needles = re.findall(r"special magic numbers for (\w+)-(\w+) is: (\d{7})\.", example.context)
        target = re.search(r"for (\w+)-(\w+) mentioned", example.question).groups()
        assert len(needles) == len({(a, n) for a, n, _ in needles}) == len({v for *_, v in needles}) == 7
        assert all((a == target[0]) != (n == target[1]) for a, n, _ in needles if (a, n) != target)
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        placed = NiahTextConfig(context_words=200, num_distractors=6, depth=depth)
        assert {e.slices["depth"] for e in placed.generate(5, seed=0)} == {depth}
    assert len({e.slices["depth"] for e in task.generate(100, seed=0)}) == 5  # depth=None draws uniformly


def test_variable_tracking_chains_read_in_order() -> None:
    task = VariableTrackingTextConfig(context_words=100, num_hops=4, num_chains=3)
    example = task.generate(1, seed=0)[0]
    statements = re.findall(r"VAR ([A-Z]{5}) = (VAR [A-Z]{5}|\d{5})\.", example.context)
    assert len(statements) == 15 and len({name for name, _ in statements}) == 15
    assigned = set()
    for name, value in statements:  # every variable is assigned from one already defined
        assert not value.startswith("VAR") or value[4:] in assigned
        assigned.add(name)


def test_haystack_filler_and_insertion() -> None:
    assert filler(random.Random(0), 10, "noise") == list(NOISE[:3])
    sentences = filler(random.Random(0), 50, "words")
    assert all(len(s.split()) == 7 for s in sentences) and len(sentences) == 8  # 56 words: the first >= 50
    assert insert(["a.", "b."], [(2, "z."), (0, "x."), (0, "y.")]) == ["x.", "y.", "a.", "b.", "z."]
    with pytest.raises(ValueError, match="outside"):
        insert(["a."], [(2, "x.")])


def test_the_queried_needle_takes_the_gap_nearest_its_depth():
    cases = [(0.9, 5, 4), (0.1, 5, 0), (0.6, 11, 6), (0.7, 3, 1), (1.0, 7, 6), (0.0, 7, 0)]
    for depth, num_gaps, gap in cases:
        needles = draw_needles(random.Random(0), 2, num_gaps, depth)
        assert needles.gaps[0] == gap, (depth, num_gaps)
        assert abs(gap / (num_gaps - 1) - depth) <= 0.5 / (num_gaps - 1)


def test_a_prefix_of_the_answer_is_wrong():
    task = make_text_task({"name": "phonebook_text", "num_entries": 4, "num_queries": 2})
    for truncated in ("434-390", "434", " 434-390\n434-3902", "4"):
        assert not task.score(truncated, "434-3902")
    assert task.score("434-3902", "434-3902")


@pytest.mark.parametrize(("task", "field"), [
    (dict(name="kv_retrieval_text", num_pairs=2**127), "task.num_pairs"),
    (dict(name="niah_text", context_words=10**9), "task.context_words"),
    (dict(name="variable_tracking_text", context_words=10**8), "task.context_words"),
    (dict(name="variable_tracking_text", num_hops=2_000_000), "task.num_hops"),
    (dict(name="variable_tracking_text", num_chains=90_001, num_hops=1), "task.num_chains"),
    (dict(name="variable_tracking_text", num_chains=3000, num_hops=5000), "distinct variable names"),
    (dict(name="phonebook_text", num_entries=10**7), "task.num_entries"),
])
def test_a_prompt_no_model_could_read_is_refused_at_config_time(task, field):
    """Each was accepted, then hung, aborted in the tokenizer or was killed for memory while its
    prompt was built, before the context check could refuse it."""
    from pydantic import ValidationError

    from recallkit.config import PretrainedRunConfig
    from recallkit.errors import one_line

    with pytest.raises(ValidationError) as error:
        PretrainedRunConfig(model={"pretrained": "tiny:llama"}, task=task)
    assert field in one_line(error.value)
