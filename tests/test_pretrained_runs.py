"""Evaluation-only runs of pretrained models in sweep files: the store, resume and the report."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recallkit.config import PretrainedRunConfig, RunConfig, run_config
from recallkit.report import frontier_points, write_report
from recallkit.sweep import load_sweep, run_sweep

pytest.importorskip("transformers")

TASK = {"name": "phonebook_text", "num_entries": 4}


def tiny_eval(**fields) -> PretrainedRunConfig:
    return PretrainedRunConfig(model={"pretrained": "tiny:llama"}, task=TASK, num_examples=3, **fields)


def test_run_config_tells_pretrained_evaluations_from_training_runs():
    config = tiny_eval(read_twice=True, eval_policies=[{"policy": "h2o", "budget": 0.5, "mode": "prefill"}])
    assert isinstance(run_config(config.model_dump(mode="json")), PretrainedRunConfig)
    assert run_config(config.model_dump(mode="json")).run_id == config.run_id
    trained = {"model": {"vocab_size": 16, "mixer": {"name": "attention"}},
               "task": {"name": "mqar", "vocab_size": 16, "seq_len": 16, "num_kv_pairs": 2}}
    assert isinstance(run_config(trained), RunConfig)
    assert len({tiny_eval().run_id, tiny_eval(read_twice=True).run_id, config.run_id}) == 3
    with pytest.raises(ValueError, match="unknown text task"):
        PretrainedRunConfig(model={"pretrained": "tiny:llama"}, task={"name": "nope"})


def test_pretrained_runs_are_stored_resumed_and_reported(tmp_path):
    policies = [{"policy": "window", "budget": 0.25, "mode": "prefill"},
                {"policy": "h2o", "budget": 0.5, "mode": "continuous"}]
    configs = [tiny_eval(), tiny_eval(read_twice=True), tiny_eval(eval_policies=policies),
               PretrainedRunConfig(model={"pretrained": str(tmp_path / "nope")}, task=TASK, num_examples=2)]
    rows = run_sweep(configs, tmp_path, quiet=True)
    by_id = {r["run_id"]: r for r in rows}
    assert [by_id[c.run_id]["status"] for c in configs] == ["done", "done", "done", "failed"]
    assert "nope: no such file or directory" in by_id[configs[3].run_id]["error"]
    plain, twice, evicted = (by_id[c.run_id] for c in configs[:3])
    assert twice["metrics"]["prefill_tokens"] > plain["metrics"]["prefill_tokens"]
    full, window, h2o = evicted["metrics"]["evals"]
    assert "policy" not in full and full["state_size"] == evicted["state_size"] == plain["state_size"]
    assert (window["policy"], window["budget"]) == ("window", 0.25)
    assert (h2o["policy"], h2o["mode"]) == ("h2o", "continuous")
    assert window["state_size"] < h2o["state_size"] < full["state_size"]  # 1/4, 1/2 of the prompt's KV
    again = run_sweep(configs[:3], tmp_path, quiet=True)  # finished runs are not run again
    assert {r["run_id"]: r["updated_at"] for r in again if r["status"] == "done"} == {
        r["run_id"]: r["updated_at"] for r in rows if r["status"] == "done"}
    points = frontier_points(rows)
    panels = {p.panel for p in points}
    assert "phonebook_text N=4" in panels and any("KV eviction" in panel for panel in panels)
    write_report(tmp_path)
    assert (tmp_path / "frontier.png").stat().st_size > 0


def test_the_pretrained_sweep_file_is_the_documented_grid():
    everything = load_sweep("sweeps/pretrained.py")
    assert all(c.num_examples >= 50 and c.model.pretrained == "smollm2-135m" for c in everything)
    configs = [c for c in everything if c.eval_policies]
    assert len(configs) == 2 * 3 * 2  # task, length, prompt mode; each with the full cache and 6 x 3 policies
    for config in configs:
        assert {(p.policy.name, p.budget, p.mode) for p in config.eval_policies} == {
            (name, budget, "prefill") for name in ("window", "sinks", "h2o", "snapkv", "tova", "knorm")
            for budget in (0.125, 0.25, 0.5)}
    lifts = [c for c in everything if not c.eval_policies]  # the read-twice lift at three seeds, full cache
    assert len(lifts) == 3 * len(configs) and {(c.seed, c.task.setting, c.read_twice) for c in lifts} == {
        (seed, c.task.setting, c.read_twice) for seed in (0, 1, 2) for c in configs}
    assert all(c.seed == 0 for c in configs)


def test_bench_pretrained_measures_prefill_and_decode(tmp_path):
    import json

    from typer.testing import CliRunner

    from recallkit.cli import app

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--pretrained", "tiny:llama", "--batch", "2", "--length", "32",
                                      "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    measured = json.loads(out.read_text())
    for key in ("prefill_tokens_per_s", "prefill_pct_peak", "decode_tokens_per_s", "evicting_decode_cost"):
        assert measured[key] > 0
    assert "tiny:llama" in result.output and "tokens/s" in result.output


def test_bench_pretrained_counts_only_attention_layers_and_matmuls_and_runs_an_ssm(tmp_path):
    import json

    from typer.testing import CliRunner

    from recallkit.cli import app
    from recallkit.hf import load_model
    from recallkit.hf.bench import prefill_flops

    lfm2 = load_model("tiny:lfm2")  # 2 of 4 layers attention, untied embedding
    config = lfm2.hf_config
    per_layer = 2 * 32 * 32 * config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    weights = lfm2.num_params() - lfm2.embed.weight.numel()  # the input side is a lookup
    assert prefill_flops(lfm2, 1, 32) == 2 * weights * 32 + 2 * per_layer
    assert prefill_flops(load_model("tiny:mamba"), 1, 32) > 0
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "--pretrained", "tiny:mamba", "--batch", "1", "--length", "16",
                                      "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "no attention layer to evict" in result.output
    assert json.loads(out.read_text())["evicting_decode_cost"] is None
    result = CliRunner().invoke(app, ["bench", "--pretrained", "tiny:llama", "--length", "0", "--quick",
                                      "--out", str(tmp_path / "none.json")])
    assert result.exit_code != 0 and "at least 1" in result.output and "Traceback" not in result.output


def test_bench_sizes_are_checked_before_any_work(tmp_path, monkeypatch):
    """A length past the context ran outside the model's positions (the default 512 + 32 decoded tokens
    on every tiny model); a huge one ended in a traceback; --batch without --pretrained was ignored;
    an --out in /proc failed after the whole benchmark."""
    import json

    from typer.testing import CliRunner

    import recallkit.bench
    from recallkit.cli import app

    def bench(*args):
        return CliRunner().invoke(app, ["bench", "--quick", *args])

    for length, message in (("481", "over tiny:llama's context of 512; use a length <= 480"),
                            ("9" * 25, "over tiny:llama's context")):
        result = bench("--pretrained", "tiny:llama", "--length", length, "--out", str(tmp_path / "x.json"))
        assert result.exit_code == 1 and message in result.output and result.output.count("\n") == 1
    result = bench("--pretrained", "tiny:mamba", "--length", str(10**13), "--out", str(tmp_path / "x.json"))
    assert result.exit_code == 1 and "beyond any machine's memory" in result.output
    out = tmp_path / "default.json"
    assert bench("--pretrained", "tiny:llama", "--batch", "1", "--out", str(out)).exit_code == 0
    assert json.loads(out.read_text())["length"] == 480  # 512 positions hold 480 + 32 decoded
    monkeypatch.setattr(recallkit.bench, "run_bench", lambda **_: pytest.fail("benchmarked before refusing"))
    assert bench("--batch", "0", "--out", str(tmp_path / "k.json")).exit_code == 2
    result = bench("--out", "/proc/recallkit-bench.json")
    assert result.exit_code == 1 and result.output.startswith("error: cannot write --out /proc/")


def test_what_a_tiny_model_cannot_do_is_refused_at_config_time():
    """Each ran and failed, and every rerun of the sweep retried it (exit 3 each time)."""
    from recallkit.errors import one_line
    from recallkit.hf import load_model
    from recallkit.hf.evicting import attention_layers
    from recallkit.sources import ARCHS_WITHOUT_ATTENTION, TINY_ARCHS

    cases = [({"model": {"pretrained": "tiny:gpt2"}}, "model.pretrained: unknown tiny architecture 'gpt2'"),
             ({"model": {"pretrained": "tiny:llama"}, "chat": True}, "no chat template"),
             ({"model": {"pretrained": "tiny:mamba"}, "eval_policies": [{"policy": "window", "budget": 4}]},
              "tiny:mamba has no attention layer")]
    for fields, message in cases:
        with pytest.raises(ValidationError) as error:
            PretrainedRunConfig(**{"task": TASK, **fields})
        assert message in one_line(error.value)
    for arch in TINY_ARCHS:  # the constant the check reads is what the models are
        has_attention = bool(attention_layers(load_model(f"tiny:{arch}").model))
        assert has_attention == (arch not in ARCHS_WITHOUT_ATTENTION), arch


def test_eviction_on_a_model_directory_without_attention_is_refused_at_config_time(tmp_path):
    """As a tiny:mamba run's: a Mamba directory's run with eval_policies failed at run time, and every
    rerun retried it. A directory that cannot be read is left to the loader's one-line errors."""
    from recallkit.errors import one_line
    from recallkit.hf.tiny import build_tiny_model

    policies = [{"policy": "window", "budget": 4}]
    for arch in ("mamba", "llama"):
        model, tokenizer = build_tiny_model(arch, 0)
        model.save_pretrained(tmp_path / arch)
        tokenizer.save_pretrained(tmp_path / arch)
    with pytest.raises(ValidationError) as error:
        PretrainedRunConfig(model={"pretrained": str(tmp_path / "mamba")}, task=TASK, eval_policies=policies)
    assert "has no attention layer, so no KV cache to evict" in one_line(error.value)
    for source in (tmp_path / "llama", tmp_path / "missing"):  # attention; no config to read
        PretrainedRunConfig(model={"pretrained": str(source)}, task=TASK, eval_policies=policies)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("[not json")
    PretrainedRunConfig(model={"pretrained": str(tmp_path / "broken")}, task=TASK, eval_policies=policies)
