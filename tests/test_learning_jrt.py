"""Learning tests (slow) of set disjointness (Just Read Twice, arXiv 2407.05483): the order effect
for causal linear attention, PLA's encoder learning to read the short set, and PLA ahead of causal
linear attention of the same state with the long set first.

A causal recurrent model reading the long set first must hold that set in its state to test the
short set's elements against it; reading the short set first it holds three elements. With the
state small (causal linear attention, one head of elu features of dim 1: 258 numbers for 2 layers
of d=32) the long-set-first order is measurably harder. Task: V=32, T=24, sets of 16 and 3 (the
jrt sweep's small-vocabulary part), 2000 steps of 64 examples, 1024 test examples.
"""

from __future__ import annotations

import pytest
import torch

import recallkit as rk
from recallkit.sweep.runner import run_sweep

pytestmark = pytest.mark.slow

VOCAB = 32
LINEAR = {"name": "linear_attention", "feature_map": "elu", "feature_dim": 1, "short_conv": 4}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def set_disjointness_run(set_sizes: tuple[int, int]) -> rk.RunConfig:
    # vocab_size + 1: the spare id (MLM mask token) every jrt sweep model keeps, as in its (v32) runs
    return rk.RunConfig(
        model={"vocab_size": VOCAB + 1, "d_model": 32, "num_layers": 2, "mixer": LINEAR, "mlp": "swiglu"},
        task={"name": "set_disjointness", "vocab_size": VOCAB, "seq_len": 24, "set_sizes": set_sizes},
        train={"lr": 3e-3, "max_steps": 2000, "batch_size": 64, "eval_every": 250,
               "num_train_examples": 200_000, "num_test_examples": 1024, "seed": 0},
    )


def test_the_long_set_first_is_harder_for_causal_linear_attention():
    # measured (seeds 0 / 1 / 2; seed 0 the same on 1 and 2 threads): short first 0.759 / 0.758 /
    # 0.772, long first 0.664 / 0.686 / 0.642; guessing one of the last three tokens scores 1/3 in
    # the long-first order
    long_first = rk.train(set_disjointness_run((16, 3)))
    short_first = rk.train(set_disjointness_run((3, 16)))
    assert long_first.state_size == short_first.state_size == 258
    long_acc, short_acc = long_first.metrics["accuracy"], short_first.metrics["accuracy"]
    print(f"set disjointness, linear attention: long first {long_acc:.3f}, short first {short_acc:.3f}")
    assert long_acc > 0.5, f"long first {long_acc:.3f}: not learnt beyond guessing among the last three"
    assert short_acc - long_acc > 0.05, f"short first {short_acc:.3f} vs long first {long_acc:.3f}"


def long_first_run(mixer: str, seed: int, num_heads: int = 2, max_steps: int = 6000) -> rk.RunConfig:
    """Long set first (24, 3), V=64, T=32: relu features of dim 2, unnormalised (a key can write
    exactly nothing), 2-layer d=32 SwiGLU models."""
    features = {"feature_map": "relu", "feature_dim": 2, "num_heads": num_heads, "normalize": False,
                "short_conv": 4}
    return rk.RunConfig(
        model={"vocab_size": 65, "d_model": 32, "num_layers": 2, "mixer": {"name": mixer, **features},
               "mlp": "swiglu"},
        task={"name": "set_disjointness", "vocab_size": 64, "seq_len": 32, "set_sizes": (24, 3)},
        train={"lr": 3e-3, "max_steps": max_steps, "batch_size": 64, "eval_every": 1000,
               "num_train_examples": 200_000, "num_test_examples": 1024, "seed": seed},
    )


def key_mass_per_token(model: rk.model.LanguageModel, batch, positions: torch.Tensor) -> float:
    """Mean phi(k_e) mass (summed over heads and features) per token at ``positions`` (T,) bool,
    in the first layer's PLA encoder: how much those tokens write into the non-causal prefix state."""
    mixer = model.blocks[0].mixer.core
    keys = []
    hook = mixer.k_e.register_forward_hook(lambda module, args, out: keys.append(out.detach()))
    with torch.no_grad():
        model(batch.inputs, batch.prefix_len)
    hook.remove()
    return float(mixer.phi(keys[0])[:, positions].sum(-1).mean())


def test_pla_reads_the_short_set_with_its_encoder():
    # Long set first (|A|, |B| = 24, 3): PLA's own route has A's tokens test themselves against a
    # bag of B alone, so its first-layer encoder should write B and little of A. One head, 3000
    # steps. Measured
    # (mass per B token / per A token, trained): seed 0 1.43 / 0.18 (at init the ratio is 1.18);
    # seed 2 0.47 / 0.03; seed 0 at 6000 steps 0.75 / 0.18; (40, 3) at T=48, seeds 0 / 1: 2.12 /
    # 0.34, 1.71 / 0.20. With one head and 3000 steps its accuracy is level with causal linear
    # attention of the same state (320): seeds 0 / 1 / 2 PLA 0.590 / 0.520 / 0.627 vs 0.550 / 0.536 /
    # 0.588 (two heads and 6000 steps give the lead the next test asserts).
    config = long_first_run("pla", seed=0, num_heads=1, max_steps=3000)
    a_size, b_size = config.task.set_sizes
    batch = config.task.generate(256, seed=10**6)
    position = torch.arange(config.task.seq_len)
    in_a = (position >= 1) & (position <= a_size)  # [start] A [sep] B [answer_sep]
    in_b = (position >= a_size + 2) & (position < a_size + 2 + b_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)  # the run's own initial weights (rk.train seeds the same way)
        untrained = rk.build_model(config.model).eval()
    result = rk.train(config)
    model = result.model.eval()
    before = key_mass_per_token(untrained, batch, in_b) / key_mass_per_token(untrained, batch, in_a)
    on_b, on_a = key_mass_per_token(model, batch, in_b), key_mass_per_token(model, batch, in_a)
    accuracy = result.metrics["accuracy"]
    print(f"pla encoder key mass per token: B {on_b:.3f}, A {on_a:.3f} (untrained B / A {before:.2f}); "
          f"accuracy {accuracy:.3f}")
    assert 0.5 < before < 2, f"untrained encoder already prefers B ({before:.2f}x): the test shows nothing"
    assert on_b > 3 * on_a, f"the encoder did not learn to read B: {on_b:.3f} per B token vs {on_a:.3f} per A"
    assert accuracy > 0.45, f"accuracy {accuracy:.3f}: not learnt beyond guessing among the last three"


def test_pla_beats_causal_linear_attention_of_the_same_state_with_the_long_set_first(tmp_path):
    # measured (PLA vs causal, state 320 each, 6000 steps), seeds 0 / 1 / 2: as here (two one-thread
    # worker processes) 0.691 vs 0.567, 0.646 vs 0.591, 0.674 vs 0.632 (mean lead 0.074, 536 s); on
    # one process of two threads 0.671 vs 0.581, 0.597 vs 0.606, 0.657 vs 0.609 (1068 s). On another
    # machine (2026-12-04; the same code gives the same numbers there) 0.684 vs 0.611, 0.588 vs 0.562,
    # 0.663 vs 0.668 (mean lead 0.031): float rounding differs between CPUs and 6000 steps amplify it.
    # One seed can go either way at this scale, so the test asserts the lead averaged over three seeds.
    # These d=32 models are bound by per-op overhead, not by GEMM, hence the two processes.
    mixers = ("pla", "linear_attention")
    configs = {(mixer, seed): long_first_run(mixer, seed) for seed in range(3) for mixer in mixers}
    rows = {r["run_id"]: r for r in run_sweep(list(configs.values()), tmp_path, executor="process", workers=2,
                                             quiet=True)}
    leads = []
    for seed in range(3):
        pla, causal = (rows[configs[(mixer, seed)].run_id] for mixer in mixers)
        assert pla["status"] == causal["status"] == "done", (pla["error"], causal["error"])
        assert pla["state_size"] == causal["state_size"] == 320
        pla_acc, causal_acc = pla["metrics"]["accuracy"], causal["metrics"]["accuracy"]
        print(f"set disjointness (24, 3), seed {seed}: pla {pla_acc:.3f}, linear attention {causal_acc:.3f}")
        leads.append(pla_acc - causal_acc)
    mean_lead = sum(leads) / len(leads)
    print(f"pla's mean lead over causal linear attention: {mean_lead:.3f}")
    assert mean_lead > 0.02, f"PLA's mean lead over three seeds is {mean_lead:.3f}, leads {leads}"
