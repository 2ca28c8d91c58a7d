"""`adapterlab bench train` on the tiny model: three recipes on the same examples, one JSON result.
No timing assertions: only that every recipe was measured and the numbers are consistent."""

from __future__ import annotations

import json
import math

import pytest

from adapters.cli import main
from test_training import set_training, write_sms_collection


def test_bench_train_measures_three_recipes_on_the_same_examples(tiny_base, catalog, tmp_path):
    set_training(catalog, "spam", batch_size="1", eval_steps="100")
    data = write_sms_collection(tmp_path / "SMSSpamCollection")
    out = tmp_path / "train.json"
    adapter_dir = catalog / "spam"
    before = sorted(p.name for p in adapter_dir.iterdir())

    rc = main(["bench", "train", "--adapter", "spam", "--catalog", str(catalog), "--base-model", str(tiny_base),
               "--data", str(data), "--examples", "32", "--val-examples", "8", "--device", "cpu",
               "--output", str(out), "--profile", "--repeat", "2", "--warmup-examples", "4"])

    assert rc == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train" and result["device_kind"] == "cpu" and result["adapter"] == "spam"
    assert result["examples"] == 32 and result["validation_examples"] == 8
    assert "bench train" in result["command"] and "--examples 32" in result["command"]
    profile = result["adapterlab_profile"]  # 32 examples packed into rows of 320 tokens, one row a step: > 10 steps
    assert profile["profiled_steps"] == 5 and profile["wall_ms_per_step"] > 0 and profile["gpu_busy_share"] is None
    assert profile["cpu_ops_launched_per_step"] > 100
    table = (tmp_path / profile["table"]).read_text()
    assert table.startswith(result["command"]) and "Self CPU" in table
    for key in ("device", "torch", "transformers", "peft", "trl", "date", "base_model"):
        assert result[key], key
    recipes = result["recipes"]
    assert set(recipes) == {"reference", "strong_baseline", "adapterlab"}
    assert result["repeats"] == 2 and "--repeat 2" in result["command"] and result["warmup_examples"] == 4
    assert set(result["warmup_seconds"]) == {"reference", "strong_baseline", "adapterlab"}
    assert all(v > 0 for v in result["warmup_seconds"].values())
    assert result["compiled_layers"] is False  # compile: true in the spec, but this is a CPU
    for name, r in recipes.items():
        # both rounds really trained (a second adapterlab run must not resume the first one's checkpoint)
        assert len(r["tokens_per_s_runs"]) == 2 and all(v > 0 for v in r["tokens_per_s_runs"]), name
        assert r["tokens_per_s"] == min(r["tokens_per_s_runs"]), name  # the lower middle of two
        assert r["real_tokens"] > 0 and r["tokens_per_s"] > 0 and r["examples_per_s"] > 0, name
        assert r["examples"] == 32 and r["peak_gpu_memory_bytes"] is None, name
        assert r["validation_loss"] is not None and math.isfinite(r["validation_loss"]), name

    reference, strong = recipes["reference"], recipes["strong_baseline"]
    assert reference["padded_tokens"] == 32 * 256 and reference["real_tokens"] < reference["padded_tokens"]
    assert reference["real_tokens"] == strong["real_tokens"]  # the same token sequences, padded differently
    assert strong["padded_tokens"] < reference["padded_tokens"]
    assert reference["real_token_share"] < strong["real_token_share"]

    # ratios within each round (runs close in time), then the median over rounds: the lower of two
    per_round = result["ratios_per_round"]
    for other in ("reference", "strong_baseline"):
        key = f"tokens_per_s_adapterlab_over_{other}"
        mine, theirs = recipes["adapterlab"]["tokens_per_s_runs"], recipes[other]["tokens_per_s_runs"]
        assert per_round[key] == pytest.approx([m / t for m, t in zip(mine, theirs)])
        assert result["ratios"][key] == min(per_round[key])

    from benchmarks.table import table
    assert "one-time warm-up (4 examples" in table([("train.json", result)])
    assert "trl 1.16.0; measured before a change" in table([("train.json", {**result, "trl": "1.16.0",
                                                                            "note": "measured before a change"})])

    assert sorted(p.name for p in adapter_dir.iterdir()) == before == ["adapter.yaml"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
