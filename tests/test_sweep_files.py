"""The shipped sweep files load, cover what they promise, and every model in them builds."""

from __future__ import annotations

import runpy
from pathlib import Path

import recallkit as rk
from recallkit.sweep import load_sweep

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"


def _keys(config: rk.RunConfig) -> set[str]:
    mixers = config.model.mixer if isinstance(config.model.mixer, list) else [config.model.mixer]
    return {m.name for m in mixers}


def listed_ids(name: str) -> list[str]:
    """The run ids of a sweep file as written (load_sweep drops repeats: its list cannot show one)."""
    return [c.run_id for c in runpy.run_path(str(SWEEPS / name))["configs"]]


def assert_listed_once(name: str) -> None:
    """No run is listed twice in the file as written."""
    listed = listed_ids(name)
    assert len(set(listed)) == len(listed), f"{name} lists {len(listed) - len(set(listed))} runs twice"


MIXER_LABELS = {"attention", "base_conv", "h3", "hyena", "based", "mamba", "linear_attention"}


def test_zoology_grid():
    everything = load_sweep(SWEEPS / "zoology.py")
    configs = everything[: 3 * 3 * 7 * 2]
    assert {c.task.seq_len for c in configs} == {64, 128, 256}
    assert {c.model.d_model for c in configs} == {64, 128, 256}
    assert {c.label for c in configs} == MIXER_LABELS
    for c in configs:
        T = c.task.seq_len
        assert c.task.num_kv_pairs == [T // 64, T // 32, T // 16]  # trained on mixed counts
        assert [(e.seq_len, e.num_kv_pairs) for e in c.test_tasks] == [(T, T // 16)]  # scored at T/16
        assert c.train.batch_size * c.task.seq_len == 2048
    assert_listed_once("zoology.py")
    # every row again at seeds 1 and 2: every point of the grid at seeds 0-2
    for width in (64, 128, 256):
        row = [c for c in everything if c.model.d_model == width and c.label in MIXER_LABELS]
        points = {(c.label, c.task.seq_len, c.train.lr) for c in row}
        assert len(points) == 3 * 7 * 2
        assert sorted((c.label, c.task.seq_len, c.train.lr, c.train.seed) for c in row) == sorted(
            (*p, seed) for p in points for seed in (0, 1, 2))
        assert all(c.train.max_steps == 1000 and c.task.vocab_size == 256 for c in row)
    # Zoology's data setting at T=64, d=64, lr 5e-3, seeds 0-2, and the plateau mixers with 4x the steps
    paper = [c for c in everything if c.label.endswith("(V8192)")]
    longer = [c for c in everything if c.label.endswith("steps)")]
    seeded = 3 * 2 * 3 * 7 * 2  # rows d=64, 128 and 256 at seeds 1 and 2
    assert len(everything) == len(configs) + seeded + len(paper) + len(longer)
    # the parts added later are listed last, so the runs before them keep their order: the d=128 and
    # d=256 rows' seeds 1 and 2, then the 4000-step runs' seeds 1 and 2
    later = [(c.model.d_model, c.train.seed) for c in everything[-(2 * 2 * 3 * 7 * 2 + 6):]]
    assert later == sorted(later[:-6]) + [(64, 1)] * 3 + [(64, 2)] * 3
    assert {d for d, _ in later[:-6]} == {128, 256}
    assert len(paper) == 7 * 3 and {c.train.seed for c in paper} == {0, 1, 2}
    assert {c.label for c in paper} == {f"{label} (V8192)" for label in MIXER_LABELS}
    for c in paper:
        assert (c.task.vocab_size, c.task.num_kv_pairs, c.model.vocab_size) == (8192, 4, 8192)
        assert [(e.seq_len, e.num_kv_pairs) for e in c.test_tasks] == [(64, 4)]
        assert (c.task.seq_len, c.model.d_model, c.train.lr, c.train.batch_size) == (64, 64, 5e-3, 32)
    assert {c.label for c in longer} == {"mamba (4000 steps)", "base_conv (4000 steps)", "hyena (4000 steps)"}
    assert sorted(c.train.seed for c in longer) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in longer:  # the grid's T=64, d=64, lr 5e-3 runs with 4x the steps
        twin = next(g for g in configs if g.label == c.label.split()[0] and g.model == c.model
                    and g.train.lr == c.train.lr and g.task == c.task)
        assert c.train.max_steps == 4 * twin.train.max_steps


def test_state_tradeoff_spans_every_family_and_builds():
    configs = load_sweep(SWEEPS / "state_tradeoff.py")
    keys = set().union(*(_keys(c) for c in configs))
    assert keys == set(rk.MIXERS)
    for c in configs:
        model = rk.build_model(c.model)
        assert model.state_size(c.task.seq_len) > 0
    assert_listed_once("state_tradeoff.py")
    models = [c.model.model_dump_json() for c in configs]
    assert all(models.count(m) == 3 for m in models)  # every point at three seeds, each seed once
    assert all(sorted(c.train.seed for c in configs if c.model.model_dump_json() == m) == [0, 1, 2]
               for m in set(models))
    headline = configs[:54]  # the points docs/results.md discussed first, each point's seeds together
    assert len({c.model.model_dump_json() for c in headline}) == 18
    assert {"sliding_window", "deltanet", "gla", "mamba2"} <= {c.label for c in headline}
    assert all(len(set(models[i:i + 3])) == 1 for i in range(0, len(models), 3))


def test_kv_eviction_sweep_evaluates_every_policy_in_both_modes():
    configs = load_sweep(SWEEPS / "kv_eviction.py")
    attention = [c for c in configs if c.eval_policies]
    assert sorted(c.train.seed for c in attention) == [0, 1, 2]  # every model at three seeds
    assert {c.label: sorted(d.train.seed for d in configs if d.label == c.label) for c in configs} == {
        c.label: [0, 1, 2] for c in configs}
    assert_listed_once("kv_eviction.py")
    specs = {(e.policy.name, e.mode) for e in attention[0].eval_policies}
    assert {name for name, _ in specs} == set(rk.POLICIES)
    assert {mode for name, mode in specs if name != "full"} == {"prefill", "continuous"}
    budgets = sorted({e.budget for e in attention[0].eval_policies})
    assert budgets[0] <= 0.07 and budgets[-1] == 1.0
    for c in configs:
        rk.build_model(c.model)


def test_jrt_sweep_compares_causal_read_twice_and_prefix_aware_at_equal_state():
    everything = load_sweep(SWEEPS / "jrt.py")
    configs = [c for c in everything if not c.label.endswith(("(bound)", "(v32)"))]
    settings = {c.task.setting for c in configs}
    assert len(settings) == 3 and any("24,4" in s for s in settings) and any("4,24" in s for s in settings)
    by_label = {}
    seeds = {}
    for c in everything:
        seeds.setdefault((c.task.setting, c.label), set()).add(c.train.seed)
    assert all(s == {0, 1, 2} for s in seeds.values())  # the lifts are measured at three seeds
    for c in configs:
        by_label.setdefault(c.task.setting, {})[c.label] = c
    for runs in by_label.values():
        assert {"linear_attention", "linear_attention + read twice", "pla", "based", "based + read twice",
                "jrt_rnn", "attention"} == set(runs)
        assert runs["linear_attention + read twice"].task.name == "read_twice"
        assert runs["pla"].train.mlm and runs["jrt_rnn"].train.mlm and not runs["linear_attention"].train.mlm
        models = {label: rk.build_model(c.model) for label, c in runs.items()}
        T = runs["linear_attention"].task.seq_len
        twice_T = runs["linear_attention + read twice"].task.seq_len
        # matched decode state: PLA and the read-twice prompt decode with the causal model's state
        assert models["pla"].state_size(T) == models["linear_attention"].state_size(T)
        assert models["linear_attention"].state_size(twice_T) == models["linear_attention"].state_size(T)
        assert models["jrt_rnn"].state_size(T) == models["based"].state_size(T)
    bound = [c for c in everything if c.label.endswith("(bound)")]
    orders = {tuple(c.task.set_sizes) for c in bound if c.task.name == "set_disjointness"}
    assert orders == {(24, 3), (3, 24)}
    recurrent = [c for c in bound if c.label != "attention (bound)"]
    states = {rk.build_model(c.model).state_size(c.task.seq_len) for c in recurrent}
    assert len(states) == 1  # causal, PLA and read twice decode with one state size
    assert all(c.train.mlm == c.label.startswith("pla") for c in bound)
    small = [c for c in everything if c.label.endswith("(v32)")]
    assert {tuple(c.task.set_sizes) for c in small} == {(16, 3), (3, 16)}
    for c in small:  # every PLA run has its causal twin: same task, same decode state
        if c.label.startswith("pla"):
            twin = next(t for t in small if t.label == c.label.replace("pla", "linear_attention")
                        and t.task == c.task)
            T = c.task.seq_len
            assert rk.build_model(c.model).state_size(T) == rk.build_model(twin.model).state_size(T)


def test_copying_sweep_evaluates_beyond_training_for_every_positional_scheme():
    configs = load_sweep(SWEEPS / "copying.py")
    copy = [c for c in configs if c.task.name == "copy"]
    positions = {c.model.mixer.position for c in copy if c.model.mixer.name == "attention"}
    assert positions == {"rope", "nope", "alibi", "hard_alibi"}
    assert {"linear_attention", "mamba", "deltanet"} <= set().union(*(_keys(c) for c in copy))
    for c in copy:
        assert max(c.eval_lengths) >= 4 * c.task.max_len
    books = [c for c in configs if c.task.name == "phonebook"]
    assert books and all(max(c.eval_lengths) > c.task.max_entries for c in books)
    for c in configs:
        rk.build_model(c.model)
        assert all(task.seq_len > 0 for task in c.length_tasks.values())
    listed = listed_ids("copying.py")
    repeated = {c.label for c in configs if listed.count(c.run_id) > 1}  # only the positional block's
    assert repeated == {"attention (RoPE)", "attention (NoPE)", "attention (ALiBi)", "attention (Hard-ALiBi)"}
    assert len(listed) - len(configs) == 4  # seed-0 runs, listed again as its first seed
    positional = {}  # (label, max_steps) -> seeds of the attention copy runs
    for c in copy:
        if c.model.mixer.name == "attention":
            positional.setdefault((c.label, c.train.max_steps), set()).add(c.train.seed)
    assert len(positional) == 8 and all(seeds == {0, 1, 2} for seeds in positional.values())
    assert {steps for _, steps in positional} == {1000, 3000}
    assert "attention (Hard-ALiBi, 3000 steps)" in {label for label, _ in positional}


def test_reversal_sweep_probes_in_weights_and_in_context_recall():
    configs = load_sweep(SWEEPS / "reversal.py")
    modes = {(c.task.mode, c.test_tasks[0].mode) for c in configs}
    assert modes == {("train", "test"), ("in_context", "in_context")}
    for c in configs:
        assert c.task.facts()[0].tolist() == c.test_tasks[0].facts()[0].tolist()  # the same facts


def test_suite_puts_every_mixer_family_on_every_suite_task():
    configs = load_sweep(SWEEPS / "suite.py")
    families = {"attention", "sliding_window", "based", "mamba2", "gated_deltanet", "kda", "deltanet",
                "linear_attention"}
    new_tasks = {"forgetting_mqar", "compositional_mqar", "selective_copy", "state_tracking",
                 "variable_tracking", "niah", "noisy_recall", "fuzzy_recall", "counting"}
    assert {c.label for c in configs} == families
    assert new_tasks <= {c.task.name for c in configs}
    settings = {c.task.setting for c in configs}
    for label in families:  # every family on every setting: the capability map has no holes
        assert {c.task.setting for c in configs if c.label == label} == settings
    assert len(settings) == 12  # parity / S5 and 0 / 3 distractors are separate columns
    for name in ("forgetting_mqar", "selective_copy"):  # the README's claims: three seeds
        assert {c.train.seed for c in configs if c.task.name == name} == {0, 1, 2}
    for c in configs:
        rk.build_model(c.model)
    assert_listed_once("suite.py")


def test_equal_state_puts_every_2025_mixer_beside_gated_deltanet_at_about_the_same_state():
    configs = load_sweep(SWEEPS / "equal_state.py")
    keys = set().union(*(_keys(c) for c in configs))
    assert {"gated_deltanet", "kda", "gated_deltaproduct", "rwkv7", "rwkv6", "gsa", "hgrn2", "mamba3",
            "longhorn"} <= keys
    states = {c.label: rk.build_model(c.model).state_size(c.task.seq_len) for c in configs}
    reference = states["gated_deltanet"]
    assert all(0.9 * reference <= state <= 1.3 * reference for state in states.values()), states
    seeds = {label: {c.train.seed for c in configs if c.label == label} for label in states}
    assert all(s == {0, 1, 2} for s in seeds.values())
    assert_listed_once("equal_state.py")


def test_log_linear_length_puts_log_linear_between_mamba2_and_attention_as_t_grows():
    configs = load_sweep(SWEEPS / "log_linear_length.py")
    states: dict[str, dict[int, int]] = {}
    for c in configs:
        assert c.task.num_kv_pairs == c.task.seq_len // 8
        states.setdefault(c.label, {})[c.task.seq_len] = rk.build_model(c.model).state_size(c.task.seq_len)
    lengths = sorted(states["log_linear"])
    assert lengths == [64, 128, 256] and {c.train.seed for c in configs} == {0, 1, 2}
    assert len(set(states["mamba2"].values())) == 1  # constant in T
    growth = [states["log_linear"][T] for T in lengths]
    assert growth == sorted(growth) and growth[-1] < 2 * growth[0]  # grows, as log T
    assert states["mamba2"][256] < states["log_linear"][256] < states["attention"][256]
    assert_listed_once("log_linear_length.py")


def test_short_mqar_trains_the_learning_tests_setting_at_three_seeds():
    from tests.test_learning_zoo import SHORT, TASK, zoo_run

    configs = load_sweep(SWEEPS / "short_mqar.py")
    new_keys = {"fox", "gated_deltaproduct", "rwkv7", "kda", "rwkv6", "mamba3", "log_linear", "longhorn",
                "hgrn2", "gsa"}
    assert new_keys <= set().union(*(_keys(c) for c in configs))
    by_label: dict[str, list[rk.RunConfig]] = {}
    for c in configs:
        by_label.setdefault(c.label, []).append(c)
        twin = zoo_run(c.model.mixer, seed=c.train.seed, setting={"task": c.task.model_dump(),
                                                                   "max_steps": c.train.max_steps})
        assert (c.model, c.train) == (twin.model, twin.train)  # the learning tests' model and training
        tasks = [zoo_run(c.model.mixer, setting={"task": task}).task
                 for task in (TASK, SHORT["task"], {**SHORT["task"], "vocab_size": 32})]
        assert c.task in tasks  # the learning tests' T=32 task, or one where the plateau mixers learn
    assert all(sorted(r.train.seed for r in runs) == [0, 1, 2] for runs in by_label.values())
    # every plateau mixer at T=32 also runs where it is measured to learn, T=16
    short = {k for label, runs in by_label.items() if runs[0].task.seq_len == 16 for k in _keys(runs[0])}
    assert {"log_linear", "longhorn", "mamba2", "mamba"} <= short
    assert_listed_once("short_mqar.py")
