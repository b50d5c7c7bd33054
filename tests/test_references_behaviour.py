"""Fields and features that used to be checked only for "it ran": each test here fails when the field
is ignored or the feature is skipped (issue 27, deliverable 3).

H2O with sinks against a brute-force reference; the training loop's gradient clipping, AdamW betas
and the cosine floor (``min_lr_ratio``) read from the optimiser as it steps; JRT's MLM objective
against the loss written out by hand; ``mlp_ratio``, ``norm_eps``; the special-token fields of copy
and n-gram lookup; reversal's ``paired_fraction``; ``resolve_device``; the demo end to end on a
reduced grid.
"""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import recallkit as rk
import recallkit.training as training
from recallkit.inference import KVCache, make_policy
from recallkit.tasks.base import IGNORE_INDEX
from tests.conftest import tiny_run

# --- H2O with attention sinks ("StreamingH2O") ----------------------------------------------------------


@pytest.mark.parametrize(("num_sinks", "recent_ratio", "budget"), [(2, 0.25, 8), (1, 0.5, 6), (3, 0.0, 7)])
def test_h2o_sinks_keeps_sinks_recent_and_top_accumulated_against_brute_force(num_sinks, recent_ratio,
                                                                              budget):
    """Brute force from the definition: every token's total attention received while it was held;
    at each eviction the first ``num_sinks`` tokens and the last int(recent_ratio * budget) are kept,
    and the remaining slots go to the tokens with the largest accumulated attention."""
    torch.manual_seed(0)
    policy = make_policy({"name": "h2o_sinks", "num_sinks": num_sinks, "recent_ratio": recent_ratio})
    B, H = 2, 3
    cache = KVCache(policy, budget)
    received = torch.zeros(B, H, 0)
    alive = [[[] for _ in range(H)] for _ in range(B)]
    gen = torch.Generator().manual_seed(1)
    sinks_seen_evicting = False
    for t in range(40):
        cache.append(torch.randn(B, H, 1, 4), torch.randn(B, H, 1, 4))
        received = torch.cat([received, torch.zeros(B, H, 1)], dim=2)
        for b in range(B):
            for h in range(H):
                alive[b][h].append(t)
        # peaked, random attention: the last query's ranking and the accumulated one disagree; the sinks
        # get little of it, so only their protection keeps them
        logits = 3 * torch.randn(B, H, len(cache), generator=gen)
        logits[..., :num_sinks] -= 6.0  # the cache is sorted by position and keeps its sinks first
        attention = logits.softmax(-1)
        for b in range(B):
            for h in range(H):
                received[b, h, alive[b][h]] += attention[b, h]
        cache.observe(attention[:, :, None])
        for b in range(B):
            for h in range(H):
                if len(alive[b][h]) > budget:
                    held = alive[b][h]
                    n_recent = int(recent_ratio * budget)
                    protected = {p for p in held if p < num_sinks} | set(held[len(held) - n_recent:])
                    rest = [p for p in held if p not in protected]
                    heavy = sorted(rest, key=lambda p: -received[b, h, p].item())[: budget - len(protected)]
                    alive[b][h] = sorted(protected | set(heavy))
                    # plain H2O (recent + top accumulated) would have dropped a sink here
                    recent = set(held[len(held) - n_recent:])
                    ranked = sorted((p for p in held if p not in recent),
                                    key=lambda p: -received[b, h, p].item())
                    sinks_seen_evicting |= any(p < num_sinks for p in ranked[budget - len(recent):])
        assert cache.positions.tolist() == alive, f"after token {t}"
    assert sinks_seen_evicting  # the sinks' protection was exercised, not just never needed


# --- the training loop: clipping, betas, the learning-rate floor --------------------------------------------

class Recorder:
    """Wraps the run's optimiser and records, at every step, the gradient norm it steps with, the
    learning rate, and the first step's gradients and Adam moments."""

    def __init__(self, monkeypatch) -> None:
        self.norms, self.lrs, self.first = [], [], None
        real = training._optimizer

        def optimizer(model, config):
            opt = real(model, config)
            params = [p for group in opt.param_groups for p in group["params"]]

            def before(opt_, args, kwargs):
                grads = [p.grad for p in params if p.grad is not None]
                self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
                self.lrs.append(opt_.param_groups[0]["lr"])
                if self.first is None:
                    self.first = [(p, p.grad.clone()) for p in params if p.grad is not None]

            opt.register_step_pre_hook(before)
            self.optimizer = opt
            return opt

        monkeypatch.setattr(training, "_optimizer", optimizer)


def test_grad_clip_clips_the_gradient_norm(monkeypatch):
    unclipped = Recorder(monkeypatch)
    rk.train(tiny_run(max_steps=5, grad_clip=1e6, lr=1e-3))
    assert min(unclipped.norms) > 0.05  # these gradients are larger than the clip below
    clipped = Recorder(monkeypatch)
    rk.train(tiny_run(max_steps=5, grad_clip=0.01, lr=1e-3))
    for norm in clipped.norms:
        assert norm == pytest.approx(0.01, rel=1e-4)


def test_betas_reach_adamw(monkeypatch):
    """After the first step Adam's moments are (1 - beta1) g and (1 - beta2) g^2."""
    for betas in ((0.9, 0.98), (0.5, 0.7)):
        recorder = Recorder(monkeypatch)
        rk.train(tiny_run(max_steps=1, betas=betas, grad_clip=1e6))
        for p, g in recorder.first:
            state = recorder.optimizer.state[p]
            torch.testing.assert_close(state["exp_avg"], (1 - betas[0]) * g)
            torch.testing.assert_close(state["exp_avg_sq"], (1 - betas[1]) * g * g)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1, 0.5])
def test_learning_rate_warms_up_then_follows_the_cosine_to_the_floor(monkeypatch, min_lr_ratio):
    recorder = Recorder(monkeypatch)
    lr, warmup, steps = 2e-3, 3, 12
    rk.train(tiny_run(max_steps=steps, warmup_steps=warmup, lr=lr, min_lr_ratio=min_lr_ratio,
                      early_stop_accuracy=None))
    expected = []
    for s in range(steps):  # step s (0-based) uses the schedule's value at s
        if s < warmup:
            expected.append(lr * (s + 1) / warmup)
        else:
            progress = (s - warmup) / (steps - warmup)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            expected.append(lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine))
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)
    assert training.lr_factor(steps, warmup, steps, min_lr_ratio) == pytest.approx(min_lr_ratio)


# --- JRT's MLM objective in training ------------------------------------------------------------------------

def _mlm_run(**train) -> rk.RunConfig:
    return rk.RunConfig(
        model=dict(vocab_size=33, d_model=16, num_layers=1, mixer={"name": "pla", "feature_dim": 4}),
        task=dict(name="mqar", vocab_size=32, seq_len=16, num_kv_pairs=2),
        train=dict(max_steps=3, batch_size=8, num_train_examples=32, num_test_examples=8, device="cpu",
                   warmup_steps=1, **train),
    )


def test_mlm_training_loss_is_next_token_after_the_prefix_plus_weighted_masked_prefix_loss():
    config = _mlm_run(mlm=True, mlm_prob=0.3, mlm_weight=0.7)
    torch.manual_seed(0)
    model = rk.build_model(config.model)
    batch = config.task.generate(8, 0)
    loss = training._loss(model, batch, config, torch.Generator().manual_seed(5))
    # by hand: mask each prefix token with probability 0.3 (the same draws), token 32 is the mask
    draws = torch.rand(batch.inputs.shape, generator=torch.Generator().manual_seed(5))
    in_prefix = torch.arange(16)[None] < batch.prefix_len[:, None]
    masked = (draws < 0.3) & in_prefix
    assert masked.any() and (~masked & in_prefix).any()
    hidden = model.hidden_states(batch.inputs.masked_fill(masked, 32), batch.prefix_len)
    logits = model.head(hidden)
    after = batch.labels.masked_fill(torch.arange(16)[None] < batch.prefix_len[:, None] - 1, IGNORE_INDEX)
    next_token = F.cross_entropy(logits[after != IGNORE_INDEX], after[after != IGNORE_INDEX])
    mlm = F.cross_entropy(logits[masked], batch.inputs[masked])
    torch.testing.assert_close(loss, next_token + 0.7 * mlm)


def test_training_with_mlm_depends_on_the_mlm_weight():
    """If the MLM term never reached the optimiser, the weight would change nothing."""
    a = rk.train(_mlm_run(mlm=True, mlm_weight=0.25, weight_decay=0.0))
    b = rk.train(_mlm_run(mlm=True, mlm_weight=2.0, weight_decay=0.0))
    wa, wb = a.model.embed.weight, b.model.embed.weight
    assert not torch.allclose(wa, wb)


# --- model fields -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_mlp_ratio_sets_the_hidden_width(mlp):
    d, L = 16, 2

    def params(ratio: int) -> int:
        config = rk.ModelConfig(vocab_size=32, d_model=d, num_layers=L, mixer={"name": "attention"}, mlp=mlp,
                                mlp_ratio=ratio)
        return rk.build_model(config).num_params()

    # per layer, gelu: d -> r d -> d (2 r d^2 + r d weights and biases); swiglu: d -> 2 r d, r d -> d
    per_ratio = (2 * d * d + d) if mlp == "gelu" else (3 * d * d + 2 * d)
    assert params(3) - params(2) == L * per_ratio
    assert params(5) - params(2) == 3 * L * per_ratio


def test_norm_eps_is_the_layer_norms_epsilon():
    """With a large eps the normalisation is visibly damped: every norm of the model computes
    (x - mean) / sqrt(var + eps) * w + b with the configured eps."""
    eps = 0.7
    torch.manual_seed(0)
    small = dict(vocab_size=32, d_model=16, num_layers=2, mixer={"name": "attention"})
    model = rk.build_model(rk.ModelConfig(**small, norm_eps=eps))
    x = torch.randn(3, 5, 16) * 0.5
    norms = [model.final_norm] + [n for block in model.blocks for n in (block.mixer_norm, block.mlp_norm)]
    for norm in norms:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
            mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
            torch.testing.assert_close(norm(x), (x - mean) / torch.sqrt(var + eps) * norm.weight + norm.bias)
    tokens = torch.randint(0, 32, (2, 8))
    other = rk.build_model(rk.ModelConfig(**small))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(model(tokens), other(tokens), atol=1e-3)


# --- tasks: special tokens and the paired fraction ----------------------------------------------------------

def test_copy_writes_its_configured_special_tokens():
    specials = dict(filler_token=3, bos_token=2, copy_token=0, eos_token=1)
    task = rk.make_task("copy", vocab_size=12, seq_len=14, alphabet_size=6, min_len=2, max_len=5, **specials)
    batch = task.generate(50, 0)
    for row, labels in zip(batch.inputs.tolist(), batch.labels.tolist()):
        assert row[0] == 2  # bos
        L = row.index(0) - 1  # the copy token follows the string
        string = row[1 : L + 1]
        assert all(4 <= c < 10 for c in string) and 2 <= L <= 5
        assert row[L + 2 : 2 * L + 2] == string and row[2 * L + 2] == 1  # the copy, then eos
        assert set(row[2 * L + 3 :]) <= {3}  # filler
        assert [x for x in labels if x != IGNORE_INDEX] == string + [1]


@pytest.mark.parametrize("key_position", ["suffix", "prefix"])
def test_ngram_lookup_writes_its_configured_special_tokens(key_position):
    specials = dict(filler_token=2, bos_token=3, sep_token=1, ans_token=0)
    task = rk.make_task("ngram_lookup", vocab_size=16, seq_len=20, alphabet_size=10, min_len=6, max_len=12,
                        ngram=2, answer_len=2, key_position=key_position, **specials)
    batch = task.generate(50, 0)
    for row, labels in zip(batch.inputs.tolist(), batch.labels.tolist()):
        assert row[0] == 3  # bos
        sep, ans = row.index(1), row.index(0)
        assert sep < ans and set(row[ans + 3 :]) <= {2}  # filler after the 2-token answer
        if key_position == "suffix":
            x, g = row[1:sep], row[sep + 1 : ans]
        else:
            g, x = row[1:sep], row[sep + 1 : ans]
        assert len(g) == 2 and all(c >= 4 for c in x + g)
        p = next(i for i in range(len(x) - 1) if x[i : i + 2] == g)
        assert [t for t in labels if t != IGNORE_INDEX] == x[p + 2 : p + 4] == row[ans + 1 : ans + 3]


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_reversal_paired_fraction_is_the_share_of_facts_also_trained_in_reverse(fraction):
    task = rk.make_task("reversal", vocab_size=48, seq_len=33, num_facts=20, paired_fraction=fraction,
                        statements=8)
    objects, paired = task.facts()
    assert paired.sum() == round(fraction * 20)
    batch = task.generate(400, 0)
    reversed_subjects = set()
    for row in batch.inputs.tolist():
        for t in range(1, len(row) - 1):
            if row[t] == 4:  # "o r^-1 s": the reverse of fact s
                reversed_subjects.add(row[t + 1] - 5)
    assert reversed_subjects == {i for i in range(20) if paired[i]}


# --- devices ---------------------------------------------------------------------------------------------

def test_resolve_device(monkeypatch):
    assert training.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        training.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training.resolve_device("auto") == torch.device("cuda")
    assert training.resolve_device("cuda") == torch.device("cuda")


# --- the demo, end to end on a reduced grid -----------------------------------------------------------------

REDUCED_DEMO = """
import recallkit as rk
from sweeps.quickstart import configs as demo_configs

# the demo's trained grid at its smallest width, 2 steps each (the real-model panel left out)
trained = [c for c in demo_configs if isinstance(c, rk.RunConfig)]
smallest = min(c.model.d_model for c in trained)
configs = [
    rk.RunConfig.model_validate(c.model_dump() | {"train": c.train.model_dump() | dict(
        max_steps=2, warmup_steps=1, eval_every=2, num_train_examples=64, num_test_examples=16,
        device="cpu")})
    for c in trained if c.model.d_model == smallest
]
"""


def test_demo_runs_end_to_end_on_a_reduced_grid(tmp_path, one_thread):
    from recallkit.cli import app

    sweep = tmp_path / "reduced_demo.py"
    sweep.write_text(textwrap.dedent(REDUCED_DEMO))
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--sweep", str(sweep), "--out", str(out), "--workers", "1",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    rows = rk.sweep.Store(out / "results.sqlite").rows()
    assert len(rows) >= 2 and {r["status"] for r in rows} == {"done"}
    assert (out / "frontier.png").stat().st_size > 0 and (out / "report.html").stat().st_size > 0
